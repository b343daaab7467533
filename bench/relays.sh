#!/bin/sh
# Several relays on one port (server.reuse_port), each with its own SQLite spool and admin port,
# for bench/run.py --relay-cmd (it stops the whole process group):
#   .venv/bin/python bench/run.py --no-save --duration 20 \
#       --relay-cmd "sh {bench_dir}/relays.sh 2 {python} {config} {tmpdir}"
# The last relay is the one run.py reads /readyz and /metrics from; the others take admin
# ports from 127.0.0.1:0 upwards of the kernel's choice (admin_listen port 0).
set -eu
n=$1 python=$2 config=$3 tmpdir=$4
i=1
while [ "$i" -lt "$n" ]; do
  sed -e 's#server: {#server: {reuse_port: true, #' \
      -e "s#spool.db#spool-$i.db#" \
      -e 's#admin_listen: "[0-9.:]*"#admin_listen: "127.0.0.1:0"#' "$config" > "$tmpdir/relay-$i.yaml"
  "$python" -m relay run -c "$tmpdir/relay-$i.yaml" > "$tmpdir/relay-$i.log" 2>&1 &
  i=$((i + 1))
done
sed -e 's#server: {#server: {reuse_port: true, #' "$config" > "$tmpdir/relay-0.yaml"
exec "$python" -m relay run -c "$tmpdir/relay-0.yaml"
