#!/usr/bin/env bash
# The reference boards, in the order their numbers depend on each other; every stage resumes where it
# stopped (finished cells, epochs of a training and attacks of a study are kept), so run it again after
# an interruption. Thread count fixed at 2 (part of every CPU cell's id; numbers depend on it).
#
#   tools/reference_boards.sh study-cells DATASET   seed 0 of every built-in, standard run only (the models the study attacks)
#   tools/reference_boards.sh studies DATASET       the convergence study of each seed-0 model
#   tools/reference_boards.sh boards DATASET SEEDS  every cell of every seed with the strong evaluation (checkpoints reused)
#   tools/reference_boards.sh entry DATASET ENTRY SEEDS  one entry's board cells (strong evaluation included)
#                                                   and, when SEEDS holds 0, the convergence study of its seed-0
#                                                   model right after it (reusing the checkpoint just trained)
#   tools/reference_boards.sh render                the leaderboards into reports/
#
# DATASET: digits or omniglot (omniglot-small from ../shared/data/omniglot-small or $RRB_OMNIGLOT).
# The strong evaluation's ensemble (benchmark/strong_eval.py: DEFAULT_STRONG, strong-v2) was chosen
# from the digits studies with a margin; the omniglot entries are computed with `entry` (board cells
# and study together, so a checkpoint never has to outlive the machine it was trained on), and their
# studies must confirm the choice (README, "Ranking").
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
  entry)
    dataset=${2:?dataset}
    entry=${3:?entry, e.g. nt}
    seeds=${4:?seeds, e.g. 0,1}
    extra=$(data_args "$dataset")
    echo "== run $dataset $entry seeds $seeds ($(date -u +%H:%M:%S))"
    # shellcheck disable=SC2086
    $PY -m benchmark run --datasets "$dataset" --defenses "$entry" --seeds "$seeds" --threads $THREADS \
      --results "$RESULTS" --quiet $extra
    if [[ ",$seeds," == *",0,"* ]]; then
      echo "== study $dataset $entry seed 0 ($(date -u +%H:%M:%S))"
      # shellcheck disable=SC2086
      $PY -m benchmark study --dataset "$dataset" --defense "$entry" --seed 0 --threads $THREADS \
        --results "$RESULTS" --quiet $extra
    fi
    ;;
  render)
    $PY -m benchmark leaderboard --results "$RESULTS" --out reports
    ;;
  *)
    sed -n '2,18p' "$0" >&2
    exit 2
    ;;
esac
