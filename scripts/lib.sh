# Shared by scripts/run and scripts/test: find Python >= 3.11 and make the project's virtualenv.
# Debian packages are installed only when running as root (CI, fresh machines).

need_root_packages() {
    # apt-get install the given Debian packages if any is missing (root only).
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ]; then
        echo "missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
        return 1
    fi
    echo "installing Debian packages: ${missing[*]}"
    if [ ! -f /var/lib/apt/.rpclib-updated ] || [ -n "$(find /var/lib/apt/.rpclib-updated -mmin +1440)" ]; then
        apt-get update -qq && touch /var/lib/apt/.rpclib-updated
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Debian packages the services need: qemu-img for disks, libvirt's headers to build
# libvirt-python (which brings libvirt's test hypervisor along).
SERVICE_PACKAGES=(qemu-utils libvirt-dev pkg-config gcc python3-dev)
# What the tests use beyond that: openssl for the RabbitMQ TLS test certificates; a
# libvirtd with QEMU, its default network and busybox for the real VM boot test; etcd;
# debootstrap for the Debian trixie root that holds RabbitMQ 4 and etcd 3.5.
TEST_PACKAGES=(openssl etcd-server etcd-client debootstrap libvirt-daemon libvirt-daemon-driver-qemu libvirt-daemon-config-network
    qemu-system-x86 dnsmasq-base iptables busybox-static)

# Every extra a deployment may need: the services and each transport (scripts/install).
DEPLOY_EXTRAS="services,rabbit,etcd,amqp1,signing"

transport_extra() {
    # The extra the transport URL $1 needs, by its scheme (nothing for memory://).
    case "$1" in
    rabbit://* | rabbits://*) echo rabbit ;;
    etcd://* | etcds://*) echo etcd,signing ;; # no verified sender on etcd: services sign
    amqp1://* | amqps://* | qpid://*) echo amqp1 ;;
    esac
}

find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        need_root_packages python3 python3-venv >&2 && echo python3 && return 0
    fi
    echo "rpclib needs Python >= 3.11" >&2
    return 1
}

quiet_pip() {
    # pip with its chatter kept in a log that is shown only when it fails.
    local venv=$1 log
    shift
    log=$(mktemp)
    if ! "$venv/bin/pip" install -q --disable-pip-version-check "$@" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        return 1
    fi
    rm -f "$log"
}

make_venv() {
    # make_venv DIR EXTRAS: create DIR (once) and install the project with EXTRAS into it.
    local venv=$1 extras=$2 python
    python=$(find_python)
    if [ ! -x "$venv/bin/python" ]; then
        if ! "$python" -m venv "$venv" 2>/dev/null; then
            rm -rf "$venv"
            need_root_packages python3-venv
            "$python" -m venv "$venv"
        fi
        quiet_pip "$venv" --upgrade pip setuptools wheel
    fi
    local spec="."
    [ -z "$extras" ] || spec=".[$extras]"
    echo "installing rpclib${extras:+ [$extras]} into $venv"
    quiet_pip "$venv" -e "$spec"
}
