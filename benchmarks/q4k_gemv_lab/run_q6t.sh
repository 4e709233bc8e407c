export PYTHONPATH=$PWD/src:$PWD/build/gpu_deps:$PWD
nvidia-smi --query-gpu=name --format=csv,noheader
python build/lab/bench_q6t.py 2>&1 | tee $OUT/bench_q6t.txt | tail -20
