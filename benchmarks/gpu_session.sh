#!/usr/bin/env bash
# The GPU measurements behind the committed results, for one call of the device tool (a lent GPU
# machine with torch and triton installed; no nox, no venv):
#     bash benchmarks/gpu_session.sh [verify] [tests] [bench] [train] [hf] [hf-compile] [train-compile] [train-graphs] [train-seeds] [train-resume] [host] [splits] [profile] [breakdown] [sweep] [sweep-b] [wsplit] [liger] [layer-modes] [layer-graph] [presplit-tiles] [seam-sweep] [ncu-fwd] [delayed] [decode] [decode-timeline] [decode-small] [sinkhorn-chain] [decode-rules] [decode-next] [decode-order] [decode-chain] [decode-wait] [hf-decode] [hf-decode-compile] [timeline-iters] [sinkhorn-tiles] [seam-bwd] [maxnreg] [split-a] [wide] [stages-b] [stages-delayed]
#     (default: tests bench train hf)
# Logs and results go to /tmp/mhc-results, packed into $OUT/results.tgz. Each part has its own time
# limit, so a failing part leaves the others' results.
set -uo pipefail
export PYTHONUNBUFFERED=1
# golden/, kernels/ and stages/ are mhc_ops' subpackages by packaging (pyproject.toml): install the checkout
# (no dependencies, no network: the image has torch and triton); where the image's site-packages is not
# writable, a plain install into /tmp/mhc-pkg instead, ahead of the checkout on the path.
if ! python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1; then
  python3 -m pip install -q --no-deps --no-build-isolation --target /tmp/mhc-pkg . >/dev/null && export PYTHONPATH=/tmp/mhc-pkg
fi
python3 -c "import mhc_ops.golden, mhc_ops.kernels, mhc_ops.stages" || { echo "mhc_ops does not import"; exit 1; }
OUT=${OUT:-/tmp/mhc-gpu}
R=/tmp/mhc-results
mkdir -p "$R" "$OUT"
parts=${*:-tests bench train hf}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$R/gpu.txt"

# The hf parts run under a transformers carried as a wheel when .whl/ holds one: the image has 5.17.0 only,
# whose DeepSeek-V4 fails in bf16 (HF's own model too; fixed in 5.20). Here, before the device call, in the
# repo's root (.whl/ is git-ignored; the device README's recipe):
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl transformers==5.24.0
# and name .whl in the call's carry. 5.24.0 runs on the image's dependencies (huggingface_hub 1.33); 5.25.0
# needs huggingface_hub 2.4, whose own dependencies (httpx2, ...) the image lacks. The wheel is installed
# with --no-deps into /tmp/tf, which the hf parts put first on PYTHONPATH; the other parts keep the image's.
HF_PATH=${PYTHONPATH:-}
if [[ " $parts " == *" hf"* ]] && compgen -G ".whl/transformers-*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/tf \
    .whl/transformers-*.whl && HF_PATH=/tmp/tf${PYTHONPATH:+:$PYTHONPATH}
fi

for part in $parts; do case $part in
verify)  # first on a new tree: the GPU tests of the kernels whose default path changed (session 37: decode's Sinkhorn
        # tile tokens first under Triton 3.6, 32 partials a step, the boundary as a compiled op (Inductor's traced
        # launches); session 36: the plain pre's collapse launched apart, one-token blocks to n = 6) and the layer's
        # CUDA-graph, compile and bug tests, the drop-ins' decode and compile tests, a few minutes
  timeout 320 python3 -m pytest -n 8 -q -p no:cacheprovider tests/bugs tests/kernels/test_stage_kernels.py \
    tests/kernels/test_fused_bwd.py tests/kernels/test_fwd_split.py tests/kernels/test_delayed.py \
    tests/kernels/test_decode.py tests/test_layer_delayed.py tests/test_cuda_graph.py tests/test_compile.py \
    tests/integrations/test_contract.py 2>&1 | grep -E "passed|failed|FAILED|ERROR" | tail -15 | tee "$R/verify.txt" ;;
tests)  # the suite compiled on the GPU: realistic shapes, CUDA graphs, no recompiles per T (160 s cut it at ~97 %)
  timeout 300 python3 -m pytest -n 8 -q -m "not slow" tests -p no:cacheprovider 2>&1 | grep -v "^DEBUG" \
    | tail -25 | tee "$R/gpu_tests.txt" ;;
bench)  # kernels against their floors and torch.compile of the golden, and host time per call
  timeout 290 python3 -m benchmarks.run --shapes 1024x4x4096,4096x4x4096,16384x4x7168,8192x8x2048,8192x6x4096 \
    --ops fwd,bwd,step,layer_step --impls mhc_ops,mhc_ops.fused,golden.compile --quick --host 1x4x4096,1024x4x4096,4096x4x4096 \
    --time-budget 240 --out "$R" 2>&1 | tail -70 | tee "$R/bench.txt" ;;
train)  # val loss vs step: plain, mHC on Triton, on the golden, two stages swapped; tokens/s and peak
        # memory of golden eager / compiled and Triton, with and without --recompute
  T="python3 -m mhc_ops.train --device cuda --layers 6 --dim 384 --heads 6 --seq 256 --batch 32 --eval-every 25"
  for run in "plain 250 60 --residual plain" "triton 250 60 --backend triton" "golden 250 90 --backend golden" \
             "swapped 250 60 --backend triton --stages sinkhorn_bwd=golden,dx=golden" \
             "triton-recompute 100 40 --backend triton --recompute" "golden-recompute 100 50 --backend golden --recompute"; do
    set -- $run
    name=$1 steps=$2 limit=$3; shift 3
    timeout "$limit" $T --steps "$steps" --out "$R/train-$name" "$@" 2>&1 | tr '\r' '\n' | tail -4 | tee -a "$R/train.txt"
  done ;;
train-compile)  # the same model under torch.compile, on the golden and on Triton
  T="python3 -m mhc_ops.train --device cuda --layers 6 --dim 384 --heads 6 --seq 256 --batch 32 --eval-every 25"
  for backend in triton golden; do
    timeout 150 $T --steps 100 --compile --backend $backend --out "$R/train-$backend-compile" 2>&1 | tr '\r' '\n' \
      | tail -4 | tee -a "$R/train.txt"
  done ;;
train-graphs)  # host time: mHC on Triton eager, under torch.compile, and under its CUDA graphs (reduce-overhead)
  T="python3 -m mhc_ops.train --device cuda --layers 6 --dim 384 --heads 6 --seq 256 --batch 32 --eval-every 25"
  for run in "eager 60" "compile 150 --compile" "reduce-overhead 200 --compile --compile-mode reduce-overhead"; do
    set -- $run
    name=$1 limit=$2; shift 2
    timeout "$limit" $T --steps 100 --backend triton --out "$R/train-graphs-$name" "$@" 2>&1 | tr '\r' '\n' \
      | tail -4 | tee -a "$R/train.txt"
  done ;;
train-seeds)  # the run-to-run spread of mHC on Triton: seeds 1 and 2 (seed 0 is the train part's)
  T="python3 -m mhc_ops.train --device cuda --layers 6 --dim 384 --heads 6 --seq 256 --batch 32 --eval-every 25"
  for seed in 1 2; do
    timeout 60 $T --steps 250 --backend triton --seed $seed --out "$R/train-triton-seed$seed" 2>&1 | tr '\r' '\n' \
      | tail -4 | tee -a "$R/train.txt"
  done ;;
train-resume)  # checkpoint, Ctrl-C and --resume on CUDA (auto device, bf16, Triton): straight against stopped + resumed
  T="python3 -m mhc_ops.train --layers 2 --dim 128 --heads 4 --seq 128 --batch 16 --steps 1500 --eval-every 100"
  timeout 120 $T --out "$R/train-resume-straight" 2>&1 | tr '\r' '\n' | tail -3 | tee -a "$R/train-resume.txt"
  timeout -s INT 15 $T --out "$R/train-resume" 2>&1 | tr '\r' '\n' | tail -1 | tee -a "$R/train-resume.txt"
  timeout 120 python3 -m mhc_ops.train --resume "$R/train-resume" 2>&1 | tr '\r' '\n' | tail -2 | tee -a "$R/train-resume.txt"
  python3 -c "import json, sys; rows = lambda d: [json.loads(l) for l in open(d + '/metrics.jsonl')]
a, b = rows(sys.argv[1] + '/train-resume-straight'), rows(sys.argv[1] + '/train-resume')
print('steps equal:', [r['step'] for r in a] == [r['step'] for r in b], 'bitwise:', [(r['train_loss'], r['val_loss']) for r in a] == [(r['train_loss'], r['val_loss']) for r in b],
      'max |val diff|:', max(abs(x['val_loss'] - y['val_loss']) for x, y in zip(a, b)))" "$R" 2>&1 | tee -a "$R/train-resume.txt"
  timeout 60 python3 -m mhc_ops.train.sample "$R/train-resume" --prompt "def " 2>&1 | tee -a "$R/train-resume.txt" ;;
host)  # the host-time rows alone (benchmarks/host.py at T = 1, 1024, 4096), with one op row
  timeout 150 python3 -m benchmarks.run --shapes 1024x4x4096 --ops fwd --impls mhc_ops --quick \
    --host 1x4x4096,1024x4x4096,4096x4x4096 --out "$R/host" 2>&1 | tail -60 | tee "$R/host.txt" ;;
splits)  # the forward's GPU time by split count (benchmarks/fwd_splits.py), the auto choice included
  timeout 150 python3 -m benchmarks.fwd_splits --quick 2>&1 | tee "$R/fwd_splits.md" | tail -45 ;;
presplit-tiles)  # pass B with and without pass A's bf16 parts, on each tile, where the default rule is unmeasured (n = 8)
  timeout 200 python3 -m benchmarks.kernel_breakdown --ops bwd --sweep --quick --shapes 8192x8x2048,8192x6x4096,1024x4x4096 \
    --grid 'presplit=False,True;block_t=32,64;block_d=64,128' 2>&1 | grep '^|' | tee "$R/presplit_tiles.md" | tail -30 ;;
seam-sweep)  # the seam's tiles and pipelining (num_warps 4: 8 replicates its small tiles) against post + delayed pre
  timeout 330 python3 -m benchmarks.delayed --rows boundary,seam --quick --shapes 4096x4x4096,16384x4x7168,8192x8x2048 \
    --seam-grid 'block_t=16,32,64;block_d=32,64;num_stages=1,2' 2>&1 | grep '^| [0-9]' | tee "$R/seam_sweep.md" | tail -20 ;;
ncu-fwd)  # Nsight Compute on the forward's kernels (single at 16384 x 4 x 7168, split at 8192 x 8 x 2048): what bounds them
  if command -v ncu >/dev/null; then
    timeout 400 ncu --clock-control none -k 'regex:_fwd_kernel|_fwd_partial_kernel|_fwd_finish_kernel' --launch-skip 1 \
      --launch-count 3 --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
      --section MemoryWorkloadAnalysis python3 -m benchmarks.kernel_breakdown --ops fwd --quick \
      --shapes 16384x4x7168,8192x8x2048 > "$R/ncu_fwd.txt" 2>&1; tail -40 "$R/ncu_fwd.txt"
  else
    echo "ncu not found" | tee "$R/ncu_fwd.txt"
  fi ;;
layer-graph)  # the layer step's CUDA-graph GPU time alone, at the issue's large shapes, with its kernels' sum and
             # the gap between them (per-kernel times in the jsonl's kernel_times)
  timeout 240 python3 -m benchmarks.layer_modes --modes graph --shapes 4096x4x4096,16384x4x7168,8192x8x2048 --out "$R" \
    2>&1 | tee "$R/layer_graph.md" | tail -8 ;;
profile)  # where the host time of a call goes (benchmarks/host_profile.py), at T = 1
  timeout 120 python3 -m benchmarks.host_profile --shape 1x4x4096 --top 30 > "$R/host_profile.md" 2>&1
  head -20 "$R/host_profile.md" ;;
breakdown)  # GPU time per kernel of the forward and the fused backward, registers and spills
  timeout 200 python3 -m benchmarks.kernel_breakdown --quick 2>&1 | tee "$R/breakdown.md" | tail -12 ;;
sweep)  # the same per kernel over a grid of tile options, at the shapes furthest from their floors
  timeout 330 python3 -m benchmarks.kernel_breakdown --shapes 8192x8x2048,8192x6x4096,1024x4x4096 --sweep --quick \
    2>&1 | tee "$R/sweep.md" | tail -5 ;;
sweep-b)  # pass B's tile (the backward's largest kernel), at n = 4 unless SWEEP_B_SHAPES says otherwise
  for shape in ${SWEEP_B_SHAPES:-16384x4x7168 4096x4x4096 1024x4x4096}; do
    timeout 100 python3 -m benchmarks.kernel_breakdown --shapes $shape --ops bwd --sweep --quick \
      --grid 'block_t=32,64,128;block_d=32,64,128' 2>&1 | grep '^|' | tee -a "$R/sweep-b.md" | tail -3
  done ;;
wsplit)  # the forward's bf16 weight split: one Triton launch against torch's, graph GPU time and host time
  timeout 120 python3 -m benchmarks.weight_split 2>&1 | tee "$R/weight_split.md" | tail -8 ;;
liger)  # is Liger-Kernel (a peer mHC implementation) on the image?
  python3 -c "import liger_kernel, importlib.metadata as m; print('liger_kernel', m.version('liger_kernel'))" 2>&1 \
    | tail -1 | tee "$R/liger.txt" ;;
delayed)  # the delayed pre against mhc_pre, kernel by kernel, and the boundary post + delayed pre, x floor
  timeout 240 python3 -m benchmarks.delayed --out "$R" 2>&1 | tee "$R/delayed.md" | tail -30 ;;
decode)  # one layer boundary's forward at decode: the ops, the seam, the one-launch kernel (benchmarks/decode.py)
  timeout 200 python3 -m benchmarks.decode --out "$R" 2>&1 | tee "$R/decode.md" | tail -30 ;;
decode-timeline)  # the one-launch decode kernel phase by phase (benchmarks/decode_timeline.py), n = 8 tiles too
  timeout 200 python3 -m benchmarks.decode_timeline 2>&1 | tee "$R/decode_timeline.md" | tail -8
  timeout 200 python3 -m benchmarks.decode_timeline --shapes 1x8x4096 --grid 'block_d=16,32,64;num_warps=4,8' 2>&1 \
    | tee -a "$R/decode_timeline.md" | tail -8 ;;
seam-bwd)  # the seam's backward: its GPU tests (and the kernels that share its tile math), then against the
          # delayed pre's backward + post's, x floor, with a tile grid (benchmarks/delayed.py)
  timeout 200 python3 -m pytest -n 8 -q tests/kernels/test_seam_bwd.py tests/kernels/test_fused_bwd.py \
    tests/kernels/test_stage_kernels.py tests/kernels/test_post_kernels.py tests/kernels/test_delayed.py \
    tests/test_delayed_op.py tests/test_layer_delayed.py -p no:cacheprovider 2>&1 | tail -5 \
    | tee "$R/seam_bwd_tests.txt"
  timeout 300 python3 -m benchmarks.delayed --rows delayed_bwd,boundary_bwd,seam_bwd --quick --out "$R" \
    --shapes 1x4x4096,1024x4x4096,4096x4x4096,16384x4x7168,8192x8x2048 ${SEAM_BWD_GRID:+--seam-bwd-grid "$SEAM_BWD_GRID"} \
    2>&1 | grep '^| [0-9]' | tee "$R/seam_bwd.md" | tail -30 ;;
decode-rules)  # the boundary at decode, ops against the one launch (delayed; plain with its collapse launched apart), by
              # T and n: where HyperStack's and the DeepSeek-V4 drop-in's decode path should take the one launch
  timeout 280 python3 -m benchmarks.decode --variants --quick --out "$R" --rows '^(ops|decode)_(delayed|plain)$|apply_launch=True(,block_t=1)?]' \
    --shapes 1x4x4096,8x4x4096,64x4x4096,1x4x7168,1x6x4096,8x6x4096,1x8x4096,8x8x4096 2>&1 | tee "$R/decode_rules.md" | grep '^| ' | tail -50 ;;
decode-next)  # session 36's open decode questions: the phases with marks that keep no dead token alive (where the
             # one-token kernel's 8.4 us go), then the one-warp 32-column candidates by kernel time (docs/perf.md XVII)
  timeout 120 python3 -m benchmarks.decode_timeline --shapes 1x4x4096,1x6x4096,1x8x4096 --iters 1,20 2>&1 \
    | tee "$R/decode_next_timeline.md" | tail -8
  timeout 200 python3 -m benchmarks.decode --variants --quick --out "$R" --rows '^(ops|decode)_delayed$|^decode_plain$|num_warps=1[],]' \
    --shapes 1x4x4096,1x6x4096 2>&1 | tee "$R/decode_next.md" | grep '^| ' | tail -20 ;;
decode-order)  # session 37: the Sinkhorn tile one matrix a thread under the GPU's Triton 3.6 (tokens first; 3.6 had
              # spread the tokens-last tile over 16 lanes): its GPU tests, one iteration's cycles by tile, the decode
              # kernel's phases by tile and by the reduction's unroll, and the rows by kernel time
  timeout 100 python3 -m pytest -n 8 -q -p no:cacheprovider tests/kernels/test_decode.py 2>&1 | tail -3 \
    | tee "$R/decode_order_tests.txt"
  timeout 90 python3 -m benchmarks.sinkhorn_chain --n 4,6 --kept-only 2>&1 | tee "$R/sinkhorn_chain_order.md" | tail -14
  timeout 150 python3 -m benchmarks.decode_timeline --shapes 1x4x4096,1x6x4096 --iters 1,20 \
    --grid 'sink_order=tokens-last,tokens-first,token-major' 2>&1 | tee "$R/decode_order_timeline.md" | tail -14
  timeout 60 python3 -m benchmarks.decode_timeline --shapes 1x4x4096 --grid 'unroll=16,32,64' 2>&1 \
    | tee "$R/decode_unroll_timeline.md" | tail -5
  timeout 150 python3 -m benchmarks.decode --variants --quick --out "$R" --rows '^(ops|decode)_delayed$|^decode_plain$|sink_order' \
    --shapes 1x4x4096,1x6x4096 2>&1 | tee "$R/decode_order.md" | grep '^| ' | tail -14 ;;
decode-chain)  # session 37: the boundary at decode inside a graph of 16 back to back (chain_us: one graph launch for
              # all, as a decode step's graph) next to gpu_us and kernel_us, ops against the one launch, the defaults
  timeout 150 python3 -m benchmarks.decode --quick --out "$R" --rows '^(ops|decode)_(delayed|plain)$' \
    --shapes 1x4x4096,1x4x7168,1x6x4096,8x4x4096,64x4x4096 2>&1 | tee "$R/decode_chain.md" | grep '^| ' | tail -22 ;;
decode-wait)  # session 38: the plain pre's collapse in the boundary's own launch, every program waiting for the last one's
             # h_pre (collapse "wait", the default where the grid fits the SMs): its GPU tests (the spin, the counters'
             # reset, bit-equality with the launched collapse, graphs, the compiled op, the drop-ins), then the rows
  timeout 300 python3 -m pytest -n 8 -q -p no:cacheprovider tests/kernels/test_decode.py tests/test_cuda_graph.py \
    tests/test_compile.py tests/integrations/test_contract.py tests/integrations/test_deepseek_v4.py -k "decode or collapse or boundary" \
    2>&1 | grep -E "passed|failed|FAILED|ERROR" | tail -15 | tee "$R/decode_wait_tests.txt"
  timeout 200 python3 -m benchmarks.decode --variants --quick --out "$R" --rows '^(ops|decode)_plain$|collapse=' \
    --shapes 1x4x4096,1x4x7168,1x6x4096,8x4x4096,32x4x4096,64x4x4096 2>&1 | tee "$R/decode_wait.md" | grep '^| ' | tail -40 ;;
timeline-iters)  # the decode boundary's Sinkhorn phase at 1, 20 and 40 iterations: what an iteration costs in the kernel
  timeout 90 python3 -m benchmarks.decode_timeline --shapes 1x4x4096,1x8x4096 --iters 1,20,40 2>&1 \
    | tee "$R/timeline_iters.md" | tail -8 ;;
sinkhorn-chain)  # one Sinkhorn iteration's cycles by reciprocal and tile (benchmarks/sinkhorn_chain.py)
  timeout 200 python3 -m benchmarks.sinkhorn_chain 2>&1 | tee "$R/sinkhorn_chain.md" | tail -42 ;;
decode-small)  # decode's one-token blocks (Performance XIII, unmeasured when written): their GPU tests, the
              # decode rows with every variant, then the timeline of the best candidates against the default
  timeout 150 python3 -m pytest -n 8 -q tests/kernels/test_decode.py tests/kernels/test_seam.py \
    tests/kernels/test_fwd_split.py tests/kernels/test_stage_kernels.py -p no:cacheprovider 2>&1 | tail -3 | tee "$R/decode_small_tests.txt"
  timeout 300 python3 -m benchmarks.decode --variants --quick --shapes 1x4x4096,1x8x4096 --out "$R" \
    2>&1 | tee "$R/decode_small.md" | grep '^| ' | tail -60
  timeout 60 python3 -m benchmarks.decode_timeline --shapes 1x4x4096,1x8x4096 2>&1 | tee "$R/decode_small_timeline.md" | tail -3
  timeout 60 python3 -m benchmarks.decode_timeline --shapes 1x4x4096,1x8x4096 --grid 'block_t=1;unroll=64;block_d=16,64' \
    2>&1 | tee -a "$R/decode_small_timeline.md" | tail -5 ;;
wide)  # the forward's projection as one wide product, one wait a chunk instead of three (Performance XIV, unmeasured
      # when written): the forward's GPU tests with it, then the forward by wide (n = 4: where it applies)
  timeout 120 python3 -m pytest -n 8 -q tests/kernels/test_fwd_split.py tests/kernels/test_delayed.py \
    tests/kernels/test_stage_kernels.py -k "wide or gpu or realistic" -p no:cacheprovider 2>&1 | tail -3 | tee "$R/wide_tests.txt"
  timeout 200 python3 -m benchmarks.kernel_breakdown --shapes 16384x4x7168,4096x4x4096,1024x4x4096 --ops fwd --sweep \
    --quick --grid 'wide=False,True' 2>&1 | grep '^|' | tee "$R/wide.md" | tail -10
  # the delayed pre's single kernel spills at its default 128 columns (255 registers), not at 64 (168)
  timeout 200 python3 -m benchmarks.delayed --rows delayed_fwd --delayed-grid 'block_d=64,128;wide=False,True' \
    --shapes 16384x4x7168,4096x4x4096,1024x4x4096 --quick 2>&1 | grep '^| [0-9]' | tee "$R/wide-delayed.md" | tail -15 ;;
split-a)  # pass A over column-chunk ranges where its token blocks leave SMs idle: its GPU tests (any arrival
         # order: bitwise repeatable; the "auto" rule), then the backward by splits_a with the default loop stages
         # (the default row is splits_a="auto": 4 at 1024 tokens, 2 at 2048, 1 from 4096 on at n = 4)
  timeout 90 python3 -m pytest -n 8 -q tests/kernels/test_fused_bwd.py -k "split" -p no:cacheprovider \
    2>&1 | tail -3 | tee "$R/split_a_tests.txt"
  timeout 200 python3 -m benchmarks.kernel_breakdown --shapes 1024x4x4096,2048x4x4096,4096x4x4096,1024x8x2048 \
    --ops bwd --sweep --quick --grid 'splits_a=1,2,4,8' 2>&1 | grep '^|' | tee "$R/split-a.md" | tail -20 ;;
stages-delayed)  # the delayed pre's backward with pass B's token loop pipelined (loop_stages; its pass A reads no x)
  timeout 250 python3 -m benchmarks.delayed --rows delayed_bwd --quick --out "$R" --delayed-bwd-grid 'loop_stages=None,2,3' \
    --shapes 1024x4x4096,16384x4x7168,8192x6x4096,8192x8x2048 2>&1 | grep '^| [0-9]' | tee "$R/stages_delayed.md" | tail -16 ;;
maxnreg)  # pass B at n = 4 (Performance XIV, unmeasured when written): capped to 168 registers (3 programs per SM
         # instead of 2), and its dx tile through an L2 slot (mm_scratch: 9 CTA barriers a tile instead of 36);
         # then the forward's register cap where its split path's grid has several waves
  timeout 60 python3 -m pytest -n 8 -q tests/kernels/test_fused_bwd.py -k "maxnreg or realistic" -p no:cacheprovider \
    2>&1 | tail -3 | tee "$R/maxnreg_tests.txt"
  for shape in 16384x4x7168 4096x4x4096 1024x4x4096; do
    timeout 100 python3 -m benchmarks.kernel_breakdown --shapes $shape --ops bwd --sweep --quick \
      --grid 'maxnreg=None,168;mm_scratch=False,True' 2>&1 | grep '^|' | tee -a "$R/maxnreg-bwd.md" | tail -4
  done
  timeout 120 python3 -m benchmarks.kernel_breakdown --shapes 4096x4x4096,1024x4x4096 --ops fwd --sweep --quick \
    --grid 'block_t=32,64;maxnreg=None,168' 2>&1 | grep '^|' | tee "$R/maxnreg-fwd.md" | tail -8 ;;
stages-b)  # pass B's token loop and pass A's column loop pipelined with all their loads (loop_stages, loop_stages_a;
          # Performance XV): their GPU tests (the rule, bitwise repeatable), then the backward
          # by loop_stages and pass B's register cap at n = 4, 6, 8, then by loop_stages_a and splits_a
  timeout 90 python3 -m pytest -n 8 -q tests/kernels/test_fused_bwd.py -k "loop_stages" -p no:cacheprovider \
    2>&1 | tail -3 | tee "$R/stages_b_tests.txt"
  for shape in 16384x4x7168 4096x4x4096 1024x4x4096 8192x8x2048 8192x6x4096; do
    timeout 100 python3 -m benchmarks.kernel_breakdown --shapes $shape --ops bwd --sweep --quick \
      --grid 'loop_stages=None,2,3;maxnreg=None,168' 2>&1 | grep '^|' | tee -a "$R/stages-b.md" | tail -6
  done
  # pass A's column loop likewise (alone and with its column split), where its few token blocks leave SMs idle
  timeout 150 python3 -m benchmarks.kernel_breakdown --shapes 1024x4x4096,4096x4x4096,16384x4x7168 --ops bwd --sweep \
    --quick --grid 'loop_stages_a=None,2,3;splits_a=1,4' 2>&1 | grep '^|' | tee "$R/stages-a.md" | tail -18 ;;
sinkhorn-tiles)  # sinkhorn's kernels at the default tile and the previous one (benchmarks/sinkhorn_tiles.py)
  timeout 150 python3 -m benchmarks.sinkhorn_tiles 2>&1 | tee "$R/sinkhorn_tiles.md" | tail -20 ;;
layer-modes)  # the layer step eager, under torch.compile, reduce-overhead and a CUDA graph: wall / graph GPU time
  timeout 420 python3 -m benchmarks.layer_modes --shapes 1x4x4096,1024x4x4096,4096x4x4096,16384x4x7168 --out "$R" \
    2>&1 | tee "$R/layer_modes.md" | tail -24 ;;
hf)  # Hugging Face DeepSeek-V4 and GLM-5-Next training steps: HF eager, patched (mhc_ops.integrations), trivial mix
  PYTHONPATH=$HF_PATH python3 -c "import transformers; print('transformers', transformers.__version__)" | tee "$R/hf.txt"
  PYTHONPATH=$HF_PATH timeout 300 python3 -m benchmarks.hf_models --rounds 7 --out "$R" 2>&1 | grep -v falling \
    | tail -20 | tee -a "$R/hf.txt" ;;
hf-decode)  # the drop-ins' decode step (benchmarks/hf_decode.py): HF eager, patched (every boundary between blocks one
           # at decode), the trivial mix; ms a token, kernels a token, logits against eager's
  PYTHONPATH=$HF_PATH python3 -c "import transformers; print('transformers', transformers.__version__)" | tee "$R/hf_decode.txt"
  PYTHONPATH=$HF_PATH timeout 300 python3 -m benchmarks.hf_decode --out "$R" 2>&1 | grep -v falling \
    | tee -a "$R/hf_decode.txt" | tail -30 ;;
hf-decode-compile)  # the same decode steps with each decoder layer under torch.compile too (the inner boundary as the
                   # op mhc_ops::boundary_decode, session 37; Inductor compiles in the untimed first round)
  PYTHONPATH=$HF_PATH timeout 540 python3 -m benchmarks.hf_decode --models deepseek_v4 --rounds 3 \
    --variants eager,mhc_ops,eager.compile,mhc_ops.compile --out "$R" 2>&1 | grep -v falling \
    | tee "$R/hf_decode_compile.txt" | tail -12 ;;
hf-compile)  # the same, eager and patched, each also with every decoder layer under torch.compile (Inductor)
  PYTHONPATH=$HF_PATH timeout 540 python3 -m benchmarks.hf_models --rounds 5 \
    --variants eager,mhc_ops,trivial,eager.compile,mhc_ops.compile --out "$R" 2>&1 | grep -v falling \
    | tail -24 | tee "$R/hf-compile.txt" ;;
*) echo "unknown part $part (the parts: $(sed -n 4p "$0" | tr -d '[]#' | sed 's/.*gpu_session.sh *//'))"; exit 2 ;;
esac
# packed after every part: a device call cut at its time limit still brings back the parts it finished
tar czf "$OUT/results.tgz" -C "$R" .
done
