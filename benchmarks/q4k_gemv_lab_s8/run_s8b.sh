export PYTHONPATH=$PWD/src:$PWD/build/gpu_deps:$PWD
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 300 python build/lab/pdl_chain.py 2>&1 | tee $OUT/pdl.log | grep -v Warn | tail -20
