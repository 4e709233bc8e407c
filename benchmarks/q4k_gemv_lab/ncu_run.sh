set -x
export PYTHONPATH=$PWD/src:$PWD/build/gpu_deps:$PWD
nvidia-smi --query-gpu=name --format=csv
python3 build/lab/ncu_q4k.py
ncu --clock-control none --kernel-name regex:_q4_k_gemv --launch-skip 2 --launch-count 1 --section WarpStateStats --section SchedulerStats --section SpeedOfLight --section InstructionStats python3 build/lab/ncu_q4k.py > $OUT/details.txt 2>&1
ncu --clock-control none --kernel-name regex:_q4_k_gemv --launch-skip 2 --launch-count 1 --section SourceCounters --section WarpStateStats --page source --print-source sass --csv python3 build/lab/ncu_q4k.py > $OUT/source.csv 2>&1
ncu --clock-control none --kernel-name regex:stream_read --launch-skip 2 --launch-count 2 --section SpeedOfLight python3 build/lab/ncu_q4k.py > $OUT/stream.txt 2>&1
tail -5 $OUT/*.txt; wc -c $OUT/*
