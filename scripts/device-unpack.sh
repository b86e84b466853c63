# Sourced by the device scripts. unpack NAME DEST: .device/NAME.xz (scripts/device-prepare.sh packs
# with xz, which keeps the stripped binaries ~35 % smaller than gzip: the tree and the carry share
# 64 MiB) into an executable DEST; the GPU machine's Python decompresses it where xz is missing.
unpack() {
  if command -v xz > /dev/null; then
    xz -dc ".device/$1.xz" > "$2"
  else
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' ".device/$1.xz" "$2"
  fi && chmod +x "$2"
}
