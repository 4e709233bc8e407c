export PYTHONPATH=$PWD/src:$PWD/build/gpu_deps:$PWD
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 400 python build/lab/xdtype_lab.py 2>&1 | tee $OUT/xdtype.log | grep -v Warn | tail -40
