export PYTHONPATH=$PWD/src:$PWD/build/gpu_deps:$PWD
python - <<'PY'
import sys; sys.path.insert(0, ".")
from pathlib import Path
from rocmforge.synth import Preset, write_synthetic_model
from tests.gguf.factories import write_model
folder = Path("/tmp/rss"); folder.mkdir(exist_ok=True)
tok = write_model(folder / "tokenizer.gguf").path
preset = Preset("qwen2", "gpu-test", "tests only", 2048, 5632, 4, 16, 4, 128, 4096, 1e6, 1e-6, False, True, 0)
print(write_synthetic_model(folder / "q4_k_m.gguf", preset, "q4_k_m", tokenizer_from=tok).path)
PY
for v in new base; do
  if [ $v = new ]; then P=$PWD/src; else P=$PWD/build/base/src; fi
  for i in 1 2; do PYTHONPATH=$P:$PWD/build/gpu_deps python build/lab/rss_diag.py /tmp/rss/q4_k_m.gguf rss; done
  PYTHONPATH=$P:$PWD/build/gpu_deps python build/lab/rss_diag.py /tmp/rss/q4_k_m.gguf prof > $OUT/kernels-$v.txt 2>&1
done
diff $OUT/kernels-base.txt $OUT/kernels-new.txt
