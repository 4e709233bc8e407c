export PYTHONPATH=$PWD/src:$PWD/build/gpu_deps:$PWD
nvidia-smi --query-gpu=name --format=csv,noheader
D=/tmp/rocmforge_gpu_decode; mkdir -p $D
(python -m rocmforge synth --arch llama --preset 7b --quant q4_k_m -q --tokenizer-from build/gpu_models/smollm2-8l.gguf --force $D/llama-7b-q4_k_m.gguf > $OUT/synth.log 2>&1 &)
export ROCMFORGE_TEST_MODEL=$PWD/build/gpu_models/smollm2-8l.gguf
timeout 170 python -m pytest -q -s -m gpu -p no:cacheprovider tests/kernels/test_packed_gemv.py tests/kernels/test_packed_matmul.py tests/kernels/test_quant_linear_gpu.py tests/test_quant_linear.py tests/engine/test_cuda_graphs.py > $OUT/tests.log 2>&1
echo "tests rc=$?"; grep -E "passed|failed|error" $OUT/tests.log | tail -2; grep -E "^(FAILED|ERROR)|tensor bytes|relative logit" $OUT/tests.log | head -6
timeout 100 python benchmarks/gpu_gemv.py --types Q6_K > $OUT/gemv6.log 2>&1; echo "gemv rc=$?"; grep -v Warn $OUT/gemv6.log | tail -13
while pgrep -f "rocmforge synth" >/dev/null; do sleep 2; done
for v in new q4tiles base; do
  case $v in new) P=$PWD/src;; q4tiles) P=$PWD/build/base2/src;; base) P=$PWD/build/base/src;; esac
  PYTHONPATH=$P:$PWD/build/gpu_deps:$PWD timeout 100 python benchmarks/gpu_decode.py --quants q4_k_m --profile-steps 5 --prefill-reps 1 --decode-steps 64 --json $OUT/decode-$v.json > $OUT/decode-$v.log 2>&1
  echo "decode $v rc=$?"; grep -E "direct:|engine:" $OUT/decode-$v.log | tail -2; grep -A3 "top_kernels" $OUT/decode-$v.log | tail -2
done
for v in new base; do
  if [ $v = new ]; then P=$PWD/src; else P=$PWD/build/base/src; fi
  PYTHONPATH=$P:$PWD/build/gpu_deps:$PWD timeout 60 python -m rocmforge bench throughput --model $D/llama-7b-q4_k_m.gguf --device cuda --num-prompts 64 --max-num-seqs 64 --input-len 128 --output-len 16 --temperature 0 > /dev/null 2>&1
  PYTHONPATH=$P:$PWD/build/gpu_deps:$PWD timeout 60 python -m rocmforge bench throughput --model $D/llama-7b-q4_k_m.gguf --device cuda --num-prompts 64 --max-num-seqs 64 --input-len 128 --output-len 128 --temperature 0 > $OUT/tp-$v.log 2>&1
  echo "tp $v rc=$?"; grep -iE "output tok/s|TPOT" $OUT/tp-$v.log | head -2
done
