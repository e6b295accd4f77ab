#!/usr/bin/env bash
# The reference boards, in the order their numbers depend on each other; every stage resumes where it
# stopped (finished cells, epochs of a training and attacks of a study are kept), so run it again after
# an interruption. Thread count fixed at 2 (part of every CPU cell's id; numbers depend on it).
#
#   tools/reference_boards.sh study-cells DATASET   seed 0 of every built-in, standard run only (the models the study attacks)
#   tools/reference_boards.sh studies DATASET       the convergence study of each seed-0 model
#   tools/reference_boards.sh boards DATASET SEEDS  every cell of every seed with the strong evaluation (checkpoints reused)
#   tools/reference_boards.sh render                the leaderboards into reports/
#
# DATASET: digits or omniglot (omniglot-small from ../shared/data/omniglot-small or $RRB_OMNIGLOT).
# The strong evaluation's ensemble (benchmark/strong_eval.py: DEFAULT_STRONG) is chosen from the
# studies of both datasets before the boards stage (README, "Ranking").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
RESULTS=${RRB_RESULTS:-results}
THREADS=2

data_args() {
  case "$1" in
    digits) ;;
    omniglot) echo "--data-root ${RRB_OMNIGLOT:-../shared/data/omniglot-small}" ;;
    *) echo "unknown dataset '$1'; accepted: digits, omniglot" >&2; exit 2 ;;
  esac
}

stage=${1:-}
case "$stage" in
  study-cells)
    dataset=${2:?dataset}
    extra=$(data_args "$dataset")
    # shellcheck disable=SC2086
    $PY -m benchmark run --datasets "$dataset" --seeds 0 --threads $THREADS --no-strong --results "$RESULTS" \
      --quiet $extra
    ;;
  studies)
    dataset=${2:?dataset}
    extra=$(data_args "$dataset")
    # the default matrix's defenses, in leaderboard order
    defenses=$($PY -c "from benchmark.matrix import builtin_defense_names; print(' '.join(builtin_defense_names()))")
    for defense in $defenses; do
      echo "== study $dataset $defense seed 0 ($(date -u +%H:%M:%S))"
      # shellcheck disable=SC2086
      $PY -m benchmark study --dataset "$dataset" --defense "$defense" --seed 0 --threads $THREADS \
        --results "$RESULTS" --quiet $extra
    done
    ;;
  boards)
    dataset=${2:?dataset}
    seeds=${3:?seeds, e.g. 0,1,2}
    extra=$(data_args "$dataset")
    # shellcheck disable=SC2086
    $PY -m benchmark run --datasets "$dataset" --seeds "$seeds" --threads $THREADS --results "$RESULTS" --quiet $extra
    ;;
  render)
    $PY -m benchmark leaderboard --results "$RESULTS" --out reports
    ;;
  *)
    sed -n '2,13p' "$0" >&2
    exit 2
    ;;
esac
