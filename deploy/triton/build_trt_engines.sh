#!/usr/bin/env bash
# GPU target: lay out a Triton model repository with TensorRT engines built from the shipped
# ONNX graphs. Run inside NVIDIA's Triton/TensorRT container on the serving GPU (engines are
# specific to a GPU model and TensorRT version; they are never committed).
#   usage: build_trt_engines.sh OUT_REPOSITORY [MODEL_DIR] [--int8 CALIBRATION_DIR]
# FP16 by default. INT8 takes the calibration caches that `radreport calibrate --out DIR`
# makes on phantoms (DIR/encoder/calibration.cache, DIR/decoder_step/calibration.cache);
# that path has not been run (our machines have no GPU).
# Not run here: no GPU and no TensorRT on our machines. The configs it copies are checked
# offline by tests/unit/serving/test_model_repository.py.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build_trt_engines.sh OUT_REPOSITORY [MODEL_DIR] [--int8 CALIBRATION_DIR]}
model_dir=${2:-$here/../../radreport/model/default}
calib=""
if [ "${3:-}" = "--int8" ]; then calib=${4:?calibration folder from radreport calibrate}; fi
precision() {  # FP16, plus INT8 with the graph's calibration cache when asked
  if [ -n "$calib" ]; then echo "--fp16 --int8 --calib=$calib/$1/calibration.cache"; else echo "--fp16"; fi
}
command -v trtexec >/dev/null || { echo "trtexec not found: run in NVIDIA's TensorRT/Triton container" >&2; exit 1; }
# model v2: 512 px input; decoder memory 1025 (fused token + 32 x 32 patches); 176 positions,
# the first step feeding the 28-token prompt and BOS at once (the findings guard re-feeds a
# prompt and a report prefix of up to 175 tokens in one step). A unit test checks these
# against the shipped graphs.
size=512 memory=1025 batch_max=4 len_max=176 past_opt=96
for model in encoder decoder_step; do
  mkdir -p "$out/$model/1"
  cp "$here/gpu/$model/config.pbtxt" "$out/$model/config.pbtxt"
done
trtexec --onnx="$model_dir/encoder.onnx" --saveEngine="$out/encoder/1/model.plan" $(precision encoder) \
  --minShapes=image:1x1x${size}x${size} --optShapes=image:2x1x${size}x${size} \
  --maxShapes=image:${batch_max}x1x${size}x${size}
trtexec --onnx="$model_dir/decoder_step.onnx" --saveEngine="$out/decoder_step/1/model.plan" $(precision decoder_step) \
  --minShapes=tokens:1x1,past_kv:3x2x1x4x0x32,memory_kv:3x2x1x4x${memory}x32 \
  --optShapes=tokens:2x1,past_kv:3x2x2x4x${past_opt}x32,memory_kv:3x2x2x4x${memory}x32 \
  --maxShapes=tokens:${batch_max}x${len_max},past_kv:3x2x${batch_max}x4x$((len_max - 1))x32,memory_kv:3x2x${batch_max}x4x${memory}x32
echo "TensorRT repository written to $out"
