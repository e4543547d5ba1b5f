#!/bin/sh
# Enable arm64 emulation (qemu-user-static via binfmt_misc) so the OCI builder can build and
# podman can run linux/arm64 images on an amd64 host. Idempotent; never fails the caller:
# it says in one line whether the emulation is usable and why not.
# Needs root and the Debian packages qemu-user-static and binfmt-support (the Makefile installs them).
HANDLER=qemu-aarch64
BINFMT=/proc/sys/fs/binfmt_misc

say() { echo "arm64 emulation: $*"; }

if [ "$(uname -m)" = "aarch64" ]; then say "not needed (the host is arm64)"; exit 0; fi
if [ "$(id -u)" != "0" ]; then say "NOT available: needs root to register a binfmt handler"; exit 0; fi
if ! command -v update-binfmts >/dev/null 2>&1 || [ ! -e /usr/share/binfmts/$HANDLER ]; then
  say "NOT available: install the Debian packages qemu-user-static and binfmt-support"; exit 0
fi
if [ ! -e $BINFMT/register ]; then
  mount -t binfmt_misc binfmt_misc $BINFMT 2>/dev/null || true
fi
if [ ! -e $BINFMT/register ]; then
  say "NOT available: cannot mount binfmt_misc at $BINFMT (an unprivileged container?)"; exit 0
fi
[ -e $BINFMT/$HANDLER ] || update-binfmts --enable $HANDLER >/dev/null 2>&1 || true
[ -e $BINFMT/$HANDLER ] || update-binfmts --import $HANDLER >/dev/null 2>&1 || true
if [ ! -e $BINFMT/$HANDLER ]; then say "NOT available: could not register $HANDLER"; exit 0; fi
flags=$(sed -n 's/^flags: *//p' $BINFMT/$HANDLER)
if ! grep -qx enabled $BINFMT/$HANDLER; then say "NOT available: $HANDLER is registered but disabled"; exit 0; fi
case "$flags" in
  *F*) say "ready ($BINFMT/$HANDLER, flags: $flags)";;
  *) say "NOT usable: $HANDLER has flags '$flags' without F (a chroot cannot find the interpreter);" \
         "remove it (echo -1 > $BINFMT/$HANDLER) and run this script again";;
esac
exit 0
