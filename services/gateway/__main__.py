"""``python -m services.gateway``: the API gateway."""

from services.gateway.main import main

if __name__ == "__main__":
    main()
