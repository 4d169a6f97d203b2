#!/usr/bin/env bash
# Installs the Debian packages vdisk's tests drive, when any is missing.
set -euo pipefail
pkgs=(qemu-utils libnbd-bin nbdkit fuse3 e2fsprogs fio libvhdi-utils libqcow-utils jq util-linux fdisk bc openssl)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "installing: ${missing[*]}"
	SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
	$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
