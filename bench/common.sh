# Shared by bench/lmtp.sh and bench/syscalls.sh (sourced, defines functions only).

# ---------------------------------------------------------------- processes
kill_wait() { # pid [seconds]: TERM, wait (bounded), then KILL
  local pid=$1 n=$(( ${2:-10} * 10 ))
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  while [ $n -gt 0 ] && kill -0 "$pid" 2>/dev/null; do sleep 0.1; n=$((n-1)); done
  kill -KILL "$pid" 2>/dev/null
  return 0
}
children_of() { cat /proc/"$1"/task/*/children 2>/dev/null; }
kill_tree() { # pid: KILL it and everything below it
  local c
  for c in $(children_of "$1"); do kill_tree "$c"; done
  kill -KILL "$1" 2>/dev/null
}
stop_master() { # pid file of a master process (Dovecot, Cyrus): TERM it, KILL its children
  local f=$1 pid kids
  [ -f "$f" ] || return 0
  pid=$(cat "$f"); kids=$(children_of "$pid")
  kill_wait "$pid"
  for k in $kids; do kill -KILL "$k" 2>/dev/null; done
  rm -f "$f"
}

# ---------------------------------------------------------------- ports
listening() { # port: is something listening on 127.0.0.1:port?
  if command -v ss >/dev/null 2>&1; then
    [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}
wait_port() { # port pid-to-watch(optional): up to 20 s
  local n=200
  while [ $n -gt 0 ]; do
    listening "$1" && return 0
    [ -n "${2:-}" ] && ! kill -0 "$2" 2>/dev/null && return 1
    sleep 0.1; n=$((n-1))
  done
  return 1
}

# ---------------------------------------------------------------- configurations
# dovecot_write_conf DIR PORT: DIR/dovecot.conf for Dovecot LMTP on 127.0.0.1:PORT (and for
# dovecot-lda -c), Maildir under DIR/mail/<user>, mail_fsync = always, the quota plugin keeping
# maildirsize up to date (as Nestbox does). DIR/run, DIR/state and DIR/mail must exist.
dovecot_write_conf() {
  local d=$1
  cat > "$d/dovecot.conf" <<EOF
# Copied from shared/anchors/dovecot-lmtp.conf: LMTP only, own paths and port.
base_dir = $d/run
state_dir = $d/state
log_path = $d/dovecot.log
protocols = lmtp
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
mail_location = maildir:$d/mail/%n
mail_uid = vmail
mail_gid = vmail
first_valid_uid = 100
default_internal_user = root
default_internal_group = root
default_login_user = root
passdb {
  driver = static
  args = password=pass
}
userdb {
  driver = static
  args = uid=vmail gid=vmail home=$d/mail/%n
}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = $2
  }
  user = root
}
service anvil {
  chroot =
}
mail_fsync = always
mail_plugins = \$mail_plugins quota
plugin {
  quota = maildir:User quota
  quota_rule = *:storage=0
}
EOF
}

# nestbox_write_conf DIR PORT DUP: DIR/nestbox.conf, mail root DIR/mail (owned by vmail),
# LMTP on 127.0.0.1:PORT, duplicatesuppression DUP (yes/no).
nestbox_write_conf() {
  local d=$1
  cat > "$d/nestbox.conf" <<EOF
partition-default: $d/mail
mail_owner: vmail
autocreate_post: yes
autocreate_quota: 0
duplicatesuppression: $3
lmtpsocket:
lmtp_listen: 127.0.0.1:$2
EOF
}
