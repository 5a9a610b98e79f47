#!/bin/sh
# Out of domain: the default model's recipe trained with POP909 held out entirely, then scored on POP909
# beside the stratified dummy and the n-grams fitted on the three collections it was trained on.
#
#   scripts/ood_pop909.sh [WORK_DIR] [STEPS]     # after scripts/default_model.sh made the corpora
#
# STEPS (default: the recipe's, train.steps of configs/default.toml) sets a shorter budget for a quick look.
# Scored: POP909's test split (91 songs, none of them seen; --split all scores all 909); a second
# evaluation fits the baselines on POP909's own train split, for comparison.
set -eu
WORK=${1:-work}
STEPS=${2:-}
NOTELM=${NOTELM:-notelm}

[ -e "$WORK/corpus/no_pop909/manifest.json" ] || $NOTELM merge "$WORK/corpus/bach" "$WORK/corpus/piano_midi_de" \
    "$WORK/corpus/nottingham" -o "$WORK/corpus/no_pop909"
RUN=$WORK/runs/ood_pop909
if [ -e "$RUN/checkpoint/config.json" ]; then
    $NOTELM train "$WORK/corpus/no_pop909" -o "$RUN" --resume --set train.time_limit=0  # a run cut by the cap finishes its steps
else
    $NOTELM train "$WORK/corpus/no_pop909" --config default -o "$RUN" ${STEPS:+--set "train.steps=$STEPS"}
fi
$NOTELM evaluate "$RUN" --corpus "$WORK/corpus/pop909" --split test --baselines-from-train -o "$RUN/eval_pop909" -q
$NOTELM evaluate "$RUN" --corpus "$WORK/corpus/pop909" --split test -o "$RUN/eval_pop909_own_baselines" -q
