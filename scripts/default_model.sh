#!/bin/sh
# Reproduce the model shipped in the package (src/notelm/assets/default_model), evaluate it, and ship it.
#
#   scripts/default_model.sh [WORK_DIR]          # default WORK_DIR: work; DATA=../shared/data by default
#
# 1. one corpus per collection, each named on the command line, then merged (about 3 minutes: music21
#    parses the chorales; the MIDI collections take seconds)
# 2. train configs/default.toml (6,000 steps: about 31 minutes alone on 2 idle cores with bf16; train.time_limit cuts
#    it at an hour, and running the script again finishes the steps)
# 3. evaluate on each collection's test split beside the n-grams fitted on that collection's train split
# 4. the 4x4 style table and the copy check (benchmarks/style_control.py)
# 5. copy the best checkpoint into the package as float16, with the copy index of its training songs that the
#    run wrote when it began (scripts/ship_default_model.py; generate keeps its pieces from long copies)
# A step whose output exists is skipped, so a stopped run continues where it was.
set -eu
WORK=${1:-work}
DATA=${DATA:-../shared/data}
NOTELM=${NOTELM:-notelm}
PYTHON=${PYTHON:-python}
COLLECTIONS="bach piano_midi_de nottingham pop909"

for name in $COLLECTIONS; do
    if [ "$name" = bach ]; then source=music21:bach; else source=$DATA/$name; fi
    [ -e "$WORK/corpus/$name/manifest.json" ] || $NOTELM prepare "$source=$name" -o "$WORK/corpus/$name" -q
done
[ -e "$WORK/corpus/all4/manifest.json" ] || $NOTELM merge $(for n in $COLLECTIONS; do echo "$WORK/corpus/$n"; done) \
    -o "$WORK/corpus/all4"

RUN=$WORK/runs/default
if [ -e "$RUN/checkpoint/config.json" ]; then
    $NOTELM train "$WORK/corpus/all4" -o "$RUN" --resume --set train.time_limit=0  # a run cut by the cap finishes its steps
else
    $NOTELM train "$WORK/corpus/all4" --config default -o "$RUN"
fi
for name in $COLLECTIONS; do
    $NOTELM evaluate "$RUN" --collection "$name" -o "$RUN/eval_$name" -q
done
$PYTHON benchmarks/style_control.py "$RUN" --pieces 256 | tee "$RUN/style_control.txt"
$PYTHON scripts/ship_default_model.py "$RUN"
