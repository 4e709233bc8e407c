export PYTHONPATH=$PWD/src:$PWD/build/gpu_deps:$PWD
nvidia-smi --query-gpu=name --format=csv,noheader
D=/tmp/rocmforge_gpu_decode; mkdir -p $D
python -m rocmforge synth --arch llama --preset 7b --quant q4_k_m -q --tokenizer-from build/gpu_models/smollm2-8l.gguf --force $D/llama-7b-q4_k_m.gguf > $OUT/synth.log 2>&1
for rep in 1 2; do
for v in new base; do
  if [ $v = new ]; then P=$PWD/src; else P=$PWD/build/base/src; fi
  PYTHONPATH=$P:$PWD/build/gpu_deps:$PWD timeout 120 python -m rocmforge bench throughput --model $D/llama-7b-q4_k_m.gguf --device cuda --num-prompts 64 --max-num-seqs 64 --input-len 128 --output-len 128 --temperature 0 --json $OUT/tp-$v-$rep.json > $OUT/tp-$v-$rep.log 2>&1
  echo "$v rep $rep rc=$?"; grep -iE "tok/s|TTFT|TPOT|ITL" $OUT/tp-$v-$rep.log | head -6
done
done
