#!/bin/sh
# Out of domain: the default model's recipe trained with POP909 held out entirely, then scored on POP909
# beside the stratified dummy and the n-grams fitted on the three collections it was trained on.
#
#   scripts/ood_pop909.sh [WORK_DIR] [MINUTES]     # after scripts/default_model.sh made the corpora
#
# MINUTES (default 30, the default model's budget) sets train.time_limit.
set -eu
WORK=${1:-work}
MINUTES=${2:-30}
NOTELM=${NOTELM:-notelm}

[ -e "$WORK/corpus/no_pop909/manifest.json" ] || $NOTELM merge "$WORK/corpus/bach" "$WORK/corpus/piano_midi_de" \
    "$WORK/corpus/nottingham" -o "$WORK/corpus/no_pop909"
RUN=$WORK/runs/ood_pop909
if [ -e "$RUN/checkpoint/config.json" ]; then
    $NOTELM train "$WORK/corpus/no_pop909" -o "$RUN" --resume
else
    $NOTELM train "$WORK/corpus/no_pop909" --config default -o "$RUN" --set "train.time_limit=$((MINUTES * 60)).0"
fi
# every POP909 song the model never saw; baselines fitted on the run's own (three-collection) training corpus
$NOTELM evaluate "$RUN" --corpus "$WORK/corpus/pop909" --split all --baselines-from-train -o "$RUN/eval_pop909" -q
