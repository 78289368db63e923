#!/usr/bin/env bash
# Install what building and testing weir needs. Safe to run twice: only
# missing packages are installed. Debian 12 and Ubuntu 22.04/24.04.
set -euo pipefail
SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO="sudo"

# bird2: BGP for the tier lab (lab/tier.sh)
pkgs=(clang llvm libelf-dev zlib1g-dev libzstd-dev pkg-config make iproute2 ethtool curl python3 file gcc nftables hping3 iputils-ping util-linux bird2)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	echo "deps: installing ${missing[*]}"
	$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
	# Installing bird2 on a systemd machine enables and starts bird.service
	# in the root namespace. The tier lab runs its own BIRDs inside its
	# namespaces and needs none there: stop and disable the service, but only
	# when this run just installed bird2 (a bird already installed is the
	# machine owner's business and is left alone).
	if [[ " ${missing[*]} " == *" bird2 "* && -d /run/systemd/system ]]; then
		echo "deps: stopping and disabling bird.service (just installed with bird2; the tier lab does not use it)"
		$SUDO systemctl disable --now bird.service >/dev/null 2>&1 || true
	fi
fi

# libbpf-rs 0.27 needs Rust >= 1.82.
need_rust() {
	command -v cargo >/dev/null 2>&1 || return 0
	local v
	v=$(rustc --version | awk '{print $2}')
	[[ "$(printf '%s\n1.82.0\n' "$v" | sort -V | head -1)" != "1.82.0" ]]
}
if need_rust; then
	echo "deps: cargo missing or older than 1.82; trying the distribution's rustc/cargo"
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq rustc cargo >/dev/null || true
	if need_rust; then
		echo "deps: error: Rust >= 1.82 is needed (rustup: https://rustup.rs), found: $(rustc --version 2>/dev/null || echo none)" >&2
		exit 1
	fi
fi
# The kernel UAPI headers for BPF live under the multiarch include dir.
[[ -e /usr/include/$(uname -m)-linux-gnu/asm/types.h ]] || {
	echo "deps: error: /usr/include/$(uname -m)-linux-gnu/asm/types.h missing (linux-libc-dev)" >&2
	exit 1
}
echo "deps: ok ($(clang --version | head -1); $(cargo --version))"
