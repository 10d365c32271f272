# Sourced by scripts/kafka.sh: a throwaway CA and certificates for the local broker's TLS mode
# (STREAMRL_KAFKA_TLS=1), all under $DATA/tls:
#
#   ca.p12, ca.pem           the CA (key in ca.p12, never leaves the data dir; ca.pem for clients)
#   broker.p12               the broker's key and CA-signed certificate (names $TLS_HOSTS)
#   truststore.p12           the CA, for the broker's own client connections and for mutual TLS
#   clients/NAME.pem, .key   client certificates signed by the CA (`kafka.sh tls-client NAME`)
#   store.password           the keystores' password (0600; the broker's config holds it anyway)
#
# keytool (shipped with every JDK the broker needs) makes the CA and the broker's keystore, so TLS
# needs nothing beyond Java. Only client certificates need openssl: Python's ssl module loads
# private keys from PEM files, which keytool cannot write. EC P-256 keys: generated in
# milliseconds (RSA-2048 takes a second per key on a busy 2-core box) and accepted by every TLS
# client Kafka and aiokafka use.
# shellcheck shell=bash

TLS_DIR="$DATA/tls"
TLS_VALID_DAYS=825

tls_password() { cat "$TLS_DIR/store.password"; }

keytool_() { keytool -J-XX:TieredStopAtLevel=1 -J-XX:+UseSerialGC -J-Xshare:auto -noprompt -storetype PKCS12 -storepass "$(tls_password)" "$@" >>"$TLS_DIR/keytool.log" 2>&1 \
    || { tail -n 20 "$TLS_DIR/keytool.log" >&2; die "keytool $1 failed (log: $TLS_DIR/keytool.log)"; }; }

# keytool's SubjectAlternativeName value: every name the broker certificate must match. The broker
# advertises 127.0.0.1 and opens connections to itself there (transaction markers), so that name
# is always in.
tls_san() {
    local host san="ip:127.0.0.1"
    for host in $TLS_HOSTS; do
        [[ "$host" == "127.0.0.1" ]] && continue
        if [[ "$host" =~ ^[0-9.]+$ || "$host" == *:* ]]; then san+=",ip:$host"; else san+=",dns:$host"; fi
    done
    echo "$san"
}

# Creates what is missing: the CA once per data dir; the broker certificate again whenever
# STREAMRL_KAFKA_TLS_HOSTS changes (clients keep trusting the same ca.pem).
tls_setup() {
    command -v keytool >/dev/null || die "keytool not found; it comes with the JDK (apt-get install openjdk-17-jdk-headless)"
    mkdir -p "$TLS_DIR"
    chmod 700 "$TLS_DIR"
    [[ -s "$TLS_DIR/store.password" ]] || (umask 077; head -c 18 /dev/urandom | base64 | tr '+/' 'xy' >"$TLS_DIR/store.password")
    if [[ ! -f "$TLS_DIR/ca.pem" ]]; then
        rm -f "$TLS_DIR/ca.p12" "$TLS_DIR/broker.p12" "$TLS_DIR/truststore.p12"
        keytool_ -genkeypair -alias ca -keyalg EC -groupname secp256r1 -sigalg SHA256withECDSA \
            -dname "CN=streamrl throwaway CA $(hostname) $(date -u +%Y%m%dT%H%M%SZ)" \
            -ext bc:c -ext KU=keyCertSign,cRLSign -validity 3650 -keystore "$TLS_DIR/ca.p12"
        keytool_ -exportcert -rfc -alias ca -keystore "$TLS_DIR/ca.p12" -file "$TLS_DIR/ca.pem.tmp"
        keytool_ -importcert -alias ca -file "$TLS_DIR/ca.pem.tmp" -keystore "$TLS_DIR/truststore.p12"
        mv "$TLS_DIR/ca.pem.tmp" "$TLS_DIR/ca.pem"
        say "made a throwaway CA: $TLS_DIR/ca.pem"
    fi
    local san
    san="$(tls_san)"
    if [[ ! -f "$TLS_DIR/broker.p12" || "$(cat "$TLS_DIR/broker.san" 2>/dev/null)" != "$san" ]]; then
        rm -f "$TLS_DIR/broker.p12"
        keytool_ -genkeypair -alias broker -keyalg EC -groupname secp256r1 -sigalg SHA256withECDSA \
            -dname "CN=streamrl local broker" -validity "$TLS_VALID_DAYS" -keystore "$TLS_DIR/broker.p12"
        keytool_ -certreq -alias broker -keystore "$TLS_DIR/broker.p12" -file "$TLS_DIR/broker.csr"
        # clientAuth too: with mutual TLS the broker presents this certificate to itself.
        keytool_ -gencert -alias ca -keystore "$TLS_DIR/ca.p12" -infile "$TLS_DIR/broker.csr" \
            -outfile "$TLS_DIR/broker.pem" -rfc -validity "$TLS_VALID_DAYS" -sigalg SHA256withECDSA \
            -ext "SAN=$san" -ext KU=digitalSignature -ext EKU=serverAuth,clientAuth
        keytool_ -importcert -alias ca -file "$TLS_DIR/ca.pem" -keystore "$TLS_DIR/broker.p12"
        keytool_ -importcert -alias broker -file "$TLS_DIR/broker.pem" -keystore "$TLS_DIR/broker.p12"
        rm -f "$TLS_DIR/broker.csr"
        echo "$san" >"$TLS_DIR/broker.san"
        say "made a broker certificate for $(echo "$san" | sed "s/ip:\|dns://g") signed by $TLS_DIR/ca.pem"
    fi
}

# The broker's TLS settings (appended to server.properties; they apply to the client listener
# and to the broker's connections to itself).
tls_properties() {
    local pw
    pw="$(tls_password)"
    printf '%s\n' "# TLS (STREAMRL_KAFKA_TLS=1), keys and certificates made by scripts/kafka/tls.sh" \
        "ssl.keystore.type=PKCS12" "ssl.keystore.location=$TLS_DIR/broker.p12" \
        "ssl.keystore.password=$pw" "ssl.key.password=$pw" \
        "ssl.truststore.type=PKCS12" "ssl.truststore.location=$TLS_DIR/truststore.p12" \
        "ssl.truststore.password=$pw" "ssl.endpoint.identification.algorithm=https" \
        "ssl.client.auth=$TLS_CLIENT_AUTH" \
        "# SASL_SSL listeners ignore the unprefixed setting (KIP-684): name the listener." \
        "listener.name.${PROTOCOL,,}.ssl.client.auth=$TLS_CLIENT_AUTH"
}

# `kafka.sh tls-client NAME`: a client key and certificate (CN=NAME) signed by the CA, for
# brokers started with STREAMRL_KAFKA_TLS_CLIENT_AUTH=required or requested.
cmd_tls_client() {
    local name="${1:-}"
    [[ "$name" =~ ^[A-Za-z0-9._-]+$ ]] || die "tls-client NAME: a name of letters, digits, '.', '_', '-' (got '$name')"
    [[ -f "$TLS_DIR/ca.p12" ]] || die "no CA in $TLS_DIR yet: start the broker once with STREAMRL_KAFKA_TLS=1"
    command -v openssl >/dev/null || die "openssl not found; client keys are PEM files, which keytool cannot write (apt-get install openssl)"
    local out="$TLS_DIR/clients"
    mkdir -p "$out"
    (umask 077; openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$out/$name.key" 2>>"$TLS_DIR/keytool.log") \
        || die "openssl could not make a key (log: $TLS_DIR/keytool.log)"
    openssl req -new -key "$out/$name.key" -subj "/CN=$name" -out "$out/$name.csr" 2>>"$TLS_DIR/keytool.log" \
        || die "openssl could not make a certificate request (log: $TLS_DIR/keytool.log)"
    keytool_ -gencert -alias ca -keystore "$TLS_DIR/ca.p12" -infile "$out/$name.csr" -outfile "$out/$name.pem" \
        -rfc -validity "$TLS_VALID_DAYS" -sigalg SHA256withECDSA -ext KU=digitalSignature -ext EKU=clientAuth
    rm -f "$out/$name.csr"
    echo "ssl_certfile=$out/$name.pem&ssl_keyfile=$out/$name.key"
}
