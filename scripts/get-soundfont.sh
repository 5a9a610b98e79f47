#!/usr/bin/env bash
# Put a General MIDI SoundFont where notelm looks for one: $1/TimGM6mb.sf2.
# Source: Debian's timgm6mb-soundfont (6 MB, GPL-2), fetched with `apt-get download`
# (no root needed) and unpacked with dpkg-deb. Already present, or no apt: say so and go on.
set -u
dest="${1:-.venv/share/notelm}"
mkdir -p "$dest"
if [ -s "$dest/TimGM6mb.sf2" ]; then exit 0; fi
if [ -s /usr/share/sounds/sf2/TimGM6mb.sf2 ]; then
  cp /usr/share/sounds/sf2/TimGM6mb.sf2 "$dest/" && exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if command -v apt-get >/dev/null && (cd "$tmp" && apt-get download -q timgm6mb-soundfont >/dev/null 2>&1); then
  dpkg-deb -x "$tmp"/timgm6mb-soundfont_*.deb "$tmp/x" && cp "$tmp/x/usr/share/sounds/sf2/TimGM6mb.sf2" "$dest/"
  cp "$tmp/x/usr/share/doc/timgm6mb-soundfont/copyright" "$dest/TimGM6mb.copyright" 2>/dev/null || true
  echo "SoundFont: TimGM6mb.sf2 (GPL-2, from Debian) -> $dest"
else
  echo "SoundFont: could not fetch timgm6mb-soundfont; WAV rendering needs one:" >&2
  echo "  apt install timgm6mb-soundfont   (or set NOTELM_SOUNDFONT=/path/to/file.sf2)" >&2
fi
exit 0
