#!/usr/bin/env bash
# TLS: certificates made here with openssl; nbdinfo and qemu-img connect
# with client certificates, a plain-text client is refused, vdisk's own
# client (nbds://) works through `vdisk serve` as a relay. Server-only
# TLS (no --tls-ca) over a Unix socket: nbdinfo and vdisk's nbds+unix://
# client connect without certificates of their own.
# The keys are ECDSA: with RSA certificates signed PKCS#1 v1.5 (openssl's
# and certtool's default), GnuTLS clients do not offer their certificate
# to a Go TLS 1.3 server, whose CertificateRequest does not list
# rsa_pkcs1 signatures.
# needs: qemu-img qemu-io nbdinfo openssl
. "$SRC_DIR/nbd-common.inc"

mkdir -p pki
cd pki
E="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
openssl req -x509 $E -keyout ca-key.pem -out ca-cert.pem -days 2 -subj /CN=vdisk-test-ca 2>/dev/null
cat > ext.cnf <<'CNF'
[srv]
subjectAltName = IP:127.0.0.1, DNS:localhost
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
basicConstraints = CA:FALSE
[cli]
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
basicConstraints = CA:FALSE
CNF
openssl req $E -keyout server-key.pem -out server.csr -subj /CN=localhost 2>/dev/null
openssl x509 -req -in server.csr -CA ca-cert.pem -CAkey ca-key.pem -CAcreateserial -out server-cert.pem -days 2 -extfile ext.cnf -extensions srv 2>/dev/null
openssl req $E -keyout client-key.pem -out client.csr -subj /CN=client 2>/dev/null
openssl x509 -req -in client.csr -CA ca-cert.pem -CAkey ca-key.pem -CAcreateserial -out client-cert.pem -days 2 -extfile ext.cnf -extensions cli 2>/dev/null
cd ..

qemu-img create -q -f raw a.raw 4M
qio -f raw -c 'write -P 0x77 1M 64k' a.raw
PORT=$(pick_port)
start_serve -f raw -t -e 4 -p $PORT --tls-cert pki/server-cert.pem --tls-key pki/server-key.pem --tls-ca pki/ca-cert.pem a.raw

echo "== nbdinfo over TLS"
nbdinfo --json "nbds://127.0.0.1:$PORT/?tls-certificates=$TEST_DIR/pki" | jq -c '{protocol, "TLS", "export-size": .exports[0]."export-size"}'
nbdinfo --map "nbds://127.0.0.1:$PORT/?tls-certificates=$TEST_DIR/pki"

echo "== qemu-io over TLS"
qio --object tls-creds-x509,id=tls0,dir=$TEST_DIR/pki,endpoint=client \
	--image-opts "driver=nbd,host=127.0.0.1,port=$PORT,tls-creds=tls0" \
	-c 'read -P 0x77 1M 64k' -c 'write -P 0x78 0 4k' -c 'read -P 0x78 0 4k'
qemu-img info --object tls-creds-x509,id=tls0,dir=$TEST_DIR/pki,endpoint=client \
	--image-opts "driver=nbd,host=127.0.0.1,port=$PORT,tls-creds=tls0" | grep 'virtual size'

echo "== vdisk's own client over TLS: a second vdisk serve relays the export"
P=$TEST_DIR/pki
SPID1=$SPID
start_serve -f raw -k "$TEST_DIR/relay.sock" "nbds://127.0.0.1:$PORT/?tls-ca=$P/ca-cert.pem&tls-cert=$P/client-cert.pem&tls-key=$P/client-key.pem"
nbdinfo --map "nbd+unix:///?socket=$TEST_DIR/relay.sock"
wait $SPID; echo "relay exit $?"
SPID=$SPID1
VDISK_NBD_TLS_CA=$P/ca-cert.pem $VDISK serve -f raw -k "$TEST_DIR/relay.sock" "nbds://127.0.0.1:$PORT/" 2>&1 | sed "s/:$PORT/:PORT/"; echo "relay without client certificate: exit ${PIPESTATUS[0]}"

echo "== plain-text clients are refused"
nbdinfo "nbd://127.0.0.1:$PORT/" >/dev/null 2>&1; echo "nbdinfo plain: exit $?"
qemu-img info "nbd://127.0.0.1:$PORT/" 2>&1 | sed "s/:$PORT/:PORT/"

echo "== a client without a certificate is refused"
mkdir -p nocert && cp pki/ca-cert.pem nocert/
nbdinfo "nbds://127.0.0.1:$PORT/?tls-certificates=$TEST_DIR/nocert" >/dev/null 2>&1; echo "nbdinfo without client cert: exit $?"
stop_serve

echo "== server-only TLS (no --tls-ca) on a Unix socket: clients need no certificate"
start_serve -f raw -t -e 2 -k "$TEST_DIR/t.sock" --tls-cert pki/server-cert.pem --tls-key pki/server-key.pem a.raw
S="$TEST_DIR/t.sock"
nbdinfo --json "nbds+unix:///?socket=$S&tls-certificates=$TEST_DIR/nocert" | jq -c '{protocol, "TLS", "export-size": .exports[0]."export-size"}'
$VDISK io -f raw -c 'read -P 0x77 1M 64k' -c 'write -P 0x79 2M 4k' -c 'read -P 0x79 2M 4k' "nbds+unix:///?socket=$S&tls-ca=$P/ca-cert.pem" | grep -v ' ops; '
VDISK_NBD_TLS_CA=$P/ca-cert.pem $VDISK info "nbds+unix:///?socket=$S" | grep -E '^(file format|virtual size)'
$VDISK info "nbd+unix:///?socket=$S" 2>&1 | sed "s#$TEST_DIR#\$TEST_DIR#"; echo "plain vdisk client: exit ${PIPESTATUS[0]}"
nbdinfo "nbd+unix:///?socket=$S" >/dev/null 2>&1; echo "nbdinfo plain: exit $?"
stop_serve
exit 0
