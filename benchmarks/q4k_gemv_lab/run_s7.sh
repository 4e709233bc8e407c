export PYTHONPATH=$PWD/src:$PWD/build/gpu_deps:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
D=/tmp/rocmforge_gpu_decode; mkdir -p $D
(python -m rocmforge synth --arch llama --preset 7b --quant q4_k_m -q --tokenizer-from build/gpu_models/smollm2-8l.gguf --force $D/llama-7b-q4_k_m.gguf > $OUT/synth.log 2>&1 &)
export ROCMFORGE_TEST_MODEL=$PWD/build/gpu_models/smollm2-8l.gguf
timeout 200 python -m pytest -q -s -m gpu -p no:cacheprovider tests/kernels/test_packed_gemv.py tests/kernels/test_packed_matmul.py tests/kernels/test_quant_linear_gpu.py tests/test_quant_linear.py > $OUT/tests.log 2>&1
echo "tests rc=$?"; grep -E "passed|failed|error" $OUT/tests.log | tail -3; grep -E "^(FAILED|ERROR)|tensor bytes|relative logit" $OUT/tests.log | head -20
PYTHONPATH=$PWD/build/base/src:$PWD/build/gpu_deps:$PWD timeout 100 python -m pytest -q -s -m gpu -p no:cacheprovider tests/kernels/test_quant_linear_gpu.py -k "memory or matches_cpu" > $OUT/tests-base.log 2>&1
echo "base memory test rc=$?"; grep -E "passed|failed|tensor bytes|relative logit" $OUT/tests-base.log | head -5
timeout 200 python benchmarks/gpu_gemv.py --types Q4_K > $OUT/gemv.log 2>&1; echo "gemv rc=$?"; grep -v Warn $OUT/gemv.log | tail -14
while pgrep -f "rocmforge synth" >/dev/null; do sleep 2; done; tail -2 $OUT/synth.log
for v in new base; do
  if [ $v = new ]; then P=$PWD/src; else P=$PWD/build/base/src; fi
  PYTHONPATH=$P:$PWD/build/gpu_deps:$PWD timeout 150 python benchmarks/gpu_decode.py --quants q4_k_m --profile-steps 5 --prefill-reps 1 --decode-steps 64 --json $OUT/decode-$v.json > $OUT/decode-$v.log 2>&1
  echo "decode $v rc=$?"; grep -E "direct:|engine:" $OUT/decode-$v.log | tail -3
done
for v in new base; do grep -A5 "top_kernels" $OUT/decode-$v.log | head -6; done
timeout 60 python benchmarks/gpu_gemv.py --committed --types Q6_K > $OUT/gemv6.log 2>&1; grep -v Warn $OUT/gemv6.log | tail -4
(cd build/base && PYTHONPATH=$PWD/src:$PWD/../gpu_deps:$PWD timeout 60 python benchmarks/gpu_gemv.py --committed --types Q4_K > $OUT/gemv-base.log 2>&1; echo "base gemv rc=$?"; grep -v Warn $OUT/gemv-base.log | tail -5)
