export PYTHONPATH=$PWD/src:$PWD/build/gpu_deps:$PWD
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 540 python build/lab/mma_lab.py 2>&1 | tee $OUT/mma.log | grep -v Warn | tail -30
