#!/usr/bin/env bash
# GPU check, for a machine with one CUDA GPU, after `pip install -r requirements.txt`; about
# 5-8 minutes. Exits non-zero on any failure, and on a NaN loss (the trainer exits 3).
#   (a) the tests that need CUDA (tests/test_cuda.py; they skip without a GPU)
#   (b) one demo epoch on --device cuda in fp32, then with --mixedprec (fp16 autocast + GradScaler)
#   (c) training segments/s and the data-wait share of Fast ResNet-34 + angleproto at the paper's
#       batch (200 speakers x 2 x 2 s), 8 loader workers, packs, without and with --augment
#   (d) extraction files/s (--eval, 10 crops of 3 s per file)
#   (e) whole-file extraction of 1-20 s files: one per pass against padded length buckets
#     bash benchmarks/gpu_check.sh [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-$(mktemp -d)}
python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device")'
python3 -c 'import torch; print("device:", torch.cuda.get_device_name(0), "torch", torch.__version__)'

echo "== (a) CUDA tests"
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py

echo "== data: the synthetic demo corpus and its packs"
[ -f "$work/demo/train_list.txt" ] || python3 data_prep.py --synthetic --save_path "$work/demo" >/dev/null
python3 -m speakernet.data.packed_audio --list "$work/demo/train_list.txt" --root "$work/demo/wav" >/dev/null
python3 -m speakernet.data.packed_audio --dir "$work/demo/musan" >/dev/null
python3 -m speakernet.data.packed_audio --dir "$work/demo/rirs" >/dev/null
data=(--train_list "$work/demo/train_list.txt" --train_path "$work/demo/wav"
      --test_list "$work/demo/test_list.txt" --test_path "$work/demo/wav"
      --musan_path "$work/demo/musan" --rir_path "$work/demo/rirs")

train() {   # name, options...: one epoch, prints the epoch line
  local name=$1; shift
  if ! python3 trainSpeakerNet.py --config configs/demo.yaml "${data[@]}" --device cuda --max_epoch 1 \
      --test_interval 1 --save_path "$work/$name" "$@" >"$work/$name.log" 2>&1; then
    echo "FAILED: $name (exit status $?)"; tail -20 "$work/$name.log"; exit 1
  fi
  echo "$name:"; grep -aoE "epoch 1: .*|EER [0-9.]+%" "$work/$name.log" | sed 's/^/  /' 
}

echo "== (b) one demo epoch, fp32 and mixed precision"
train fp32
train fp16 --mixedprec

echo "== (c) Fast ResNet-34 + angleproto, 200 x 2 x 2 s, 8 workers, packs"
paper=(--trainfunc angleproto --batch_size 200 --nPerSpeaker 2 --max_frames 200 --nDataLoaderThread 8 --packs auto)
train paper_clean "${paper[@]}"
train paper_augment "${paper[@]}" --augment

echo "== (d) extraction"
python3 trainSpeakerNet.py --eval --config configs/demo.yaml "${data[@]}" --device cuda --eval_frames 300 \
    --initial_model "$work/fp32/model/model000000001.model" --save_path "$work/eval" >"$work/eval.log" 2>&1
grep -aoE "evaluated [0-9]+ files in [0-9.]+ s \(embedding [0-9.]+ s\)" "$work/eval.log" \
    | awk '{gsub(/[()]/, ""); printf "  %s files embedded in %s s: %.1f files/s\n", $2, $8, $2 / $8}'

echo "== (e) whole files, one per pass against padded length buckets"
python3 benchmarks/bench_eval.py --whole-files 200 --device cuda --repeats 2
echo "gpu check passed"
