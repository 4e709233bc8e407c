export PYTHONPATH=$PWD/src:$PWD/build/gpu_deps:$PWD
nvidia-smi --query-gpu=name --format=csv,noheader
python3 build/lab/bench_v5.py 2>&1 | tail -14
for kn in q4k_v5 q4k_v5t; do
ncu --clock-control none --kernel-name regex:"^${kn}\$" --launch-skip 2 --launch-count 1 --section SpeedOfLight --section Occupancy --section LaunchStats --section SchedulerStats --section WarpStateStats --section MemoryWorkloadAnalysis python3 build/lab/ncu_v5.py > $OUT/ncu_$kn.txt 2>&1
ncu --clock-control none --kernel-name regex:"^${kn}\$" --launch-skip 2 --launch-count 1 --section SourceCounters --section WarpStateStats --page source --print-source sass --csv python3 build/lab/ncu_v5.py > $OUT/src_$kn.csv 2>&1
grep -E "Duration|DRAM Throughput|Registers Per|Achieved Occupancy|Theoretical Occ|Eligible Warps|Issued Warp|Block Limit" $OUT/ncu_$kn.txt
done
