#!/usr/bin/env bash
# Make a private CA and the certificates the TLS tests, the benchmarks and
# `redis-cluster.sh --tls` use, in DIR (default var/tls). Keys are P-256
# ECDSA. Nothing here is for production: the keys are unencrypted and the
# CA is made on the spot.
#
#   ca.pem                 the CA everything below but the strangers chains to
#   server.pem/.key        localhost, 127.0.0.1, ::1; valid 30 days
#   other-host.pem/.key    other.example only: the wrong host name
#   expired.pem/.key       localhost, 127.0.0.1; expired in 2020
#   stranger-ca.pem        another CA, nobody trusts it
#   stranger.pem/.key      localhost, 127.0.0.1, from the stranger CA
#   client-ca.pem          the CA client certificates must chain to
#   client.pem/.key        a client certificate from it
#   stranger-client.pem/.key  a client certificate from the stranger CA
#
# Usage: scripts/tls-certs.sh [DIR]
set -euo pipefail

dir=${1:-var/tls}
mkdir -p "$dir"
cd "$dir"
if [[ -s server.pem && -s client.pem && -s expired.pem ]] \
    && openssl x509 -in server.pem -noout -checkend 86400 >/dev/null 2>&1; then
    exit 0
fi

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

ca() { # name subject
    key "$1.key"
    openssl req -x509 -new -key "$1.key" -out "$1.pem" -days 3650 -subj "/CN=$2" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
}

# leaf name ca subject san usage [startdate enddate]
leaf() {
    local name=$1 ca=$2 subject=$3 san=$4 usage=$5
    key "$name.key"
    openssl req -new -key "$name.key" -out "$name.csr" -subj "/CN=$subject"
    printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\n%s\n' \
        "$usage" "${san:+subjectAltName=$san}" >"$name.ext"
    if [[ $# -gt 5 ]]; then
        # openssl x509 cannot set dates in the past; openssl ca can.
        mkdir -p "ca-$name"
        : >"ca-$name/index"
        printf '[ca]\ndefault_ca=d\n[d]\ndatabase=ca-%s/index\nnew_certs_dir=ca-%s\nserial=ca-%s/serial\ndefault_md=sha256\npolicy=p\ncopy_extensions=none\n[p]\ncommonName=supplied\n' \
            "$name" "$name" "$name" >"ca-$name/conf"
        echo 01 >"ca-$name/serial"
        openssl ca -batch -config "ca-$name/conf" -cert "$ca.pem" -keyfile "$ca.key" \
            -in "$name.csr" -out "$name.pem" -extfile "$name.ext" -notext \
            -startdate "$6" -enddate "$7" 2>/dev/null
        rm -rf "ca-$name"
    else
        openssl x509 -req -in "$name.csr" -CA "$ca.pem" -CAkey "$ca.key" -CAcreateserial \
            -out "$name.pem" -days 30 -extfile "$name.ext" 2>/dev/null
    fi
    rm -f "$name.csr" "$name.ext"
}

ca ca "millrace test CA"
ca stranger-ca "stranger CA"
ca client-ca "millrace test client CA"
leaf server ca localhost "DNS:localhost,IP:127.0.0.1,IP:::1" serverAuth,clientAuth
leaf other-host ca other.example "DNS:other.example" serverAuth
leaf expired ca localhost "DNS:localhost,IP:127.0.0.1" serverAuth 20200101000000Z 20200201000000Z
leaf stranger stranger-ca localhost "DNS:localhost,IP:127.0.0.1" serverAuth
leaf client client-ca "millrace client" "" clientAuth
leaf stranger-client stranger-ca "stranger client" "" clientAuth
rm -f ./*.srl
chmod 600 ./*.key
