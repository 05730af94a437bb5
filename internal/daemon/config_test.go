package daemon

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/nudge-dm/nudge/decision"
	"github.com/nudge-dm/nudge/profile"
	"github.com/nudge-dm/nudge/profile/redisstore"
)

func env(vars map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadPrecedenceDefaultsFileEnvFlags(t *testing.T) {
	file := writeFile(t, "nudged.yaml", `
listen: 127.0.0.1:7001
redis:
  addr: 127.0.0.1:6390
  pool_size: 100
decision:
  budget: 20ms
  audit_sample: 0.5
log:
  format: json
`)
	got, err := Load(
		[]string{"--config", file, "--decision-budget", "30ms"},
		env(map[string]string{"NUDGE_REDIS_POOL_SIZE": "200", "NUDGE_DECISION_BUDGET": "25ms", "NUDGE_LOG_LEVEL": "debug"}),
		io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	c := got.Config
	checks := []struct {
		name      string
		got, want any
	}{
		{"listen from the file", c.Listen, "127.0.0.1:7001"},
		{"redis.addr from the file", c.Redis.Addr, "127.0.0.1:6390"},
		{"redis.pool_size: env over file", c.Redis.PoolSize, 200},
		{"decision.budget: flag over env over file", c.Decision.Budget, 30 * time.Millisecond},
		{"decision.audit_sample from the file", c.Decision.AuditSample, 0.5},
		{"log.format from the file", c.Log.Format, "json"},
		{"log.level from env", c.Log.Level, "debug"},
		{"decision.budget_max default", c.Decision.BudgetMax, time.Second},
		{"delivery.max_unacked default", c.Delivery.MaxUnacked, 1000},
	}
	for _, ck := range checks {
		if ck.got != ck.want {
			t.Errorf("%s: got %v, want %v", ck.name, ck.got, ck.want)
		}
	}
}

func TestLoadConfigFromEnvAndEqualsForm(t *testing.T) {
	file := writeFile(t, "n.yaml", "buckets: 64\n")
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
	}{
		{"NUDGE_CONFIG", nil, map[string]string{"NUDGE_CONFIG": file}},
		{"--config=", []string{"--config=" + file}, nil},
		{"-config", []string{"-config", file}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Load(tc.args, env(tc.env), io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if got.Config.Buckets != 64 {
				t.Fatalf("buckets = %d, want 64 from the file", got.Config.Buckets)
			}
		})
	}
}

func TestLoadRefuses(t *testing.T) {
	for _, tc := range []struct {
		name, file string
		args       []string
		env        map[string]string
		want       string // in the error
	}{
		{name: "unknown top-level key", file: "listne: x\n", want: "field listne not found"},
		{name: "unknown nested key", file: "redis:\n  adr: x\n", want: "line 2: field adr not found"},
		{name: "wrong type", file: "buckets: many\n", want: "cannot unmarshal !!str `many` into int"},
		{name: "bad duration", file: "decision:\n  budget: soon\n", want: "line 2: cannot unmarshal !!str `soon` into time.Duration"},
		{name: "unknown flag", args: []string{"--no-such-flag"}, want: "no-such-flag"},
		{name: "bad env value", env: map[string]string{"NUDGE_BUCKETS": "x"}, want: `NUDGE_BUCKETS="x"`},
		{name: "stray argument", args: []string{"serve"}, want: "unexpected arguments"},
		{name: "audit sample range", args: []string{"--audit-sample", "2"}, want: "decision.audit_sample: 2 is not between 0 and 1"},
		{name: "log format", args: []string{"--log-format", "xml"}, want: `log.format: "xml"`},
		{name: "log level", args: []string{"--log-level", "loud"}, want: "log.level"},
		{name: "tls half", args: []string{"--tls-cert-file", "c.pem"}, want: "tls: cert_file and key_file go together"},
		{name: "mtls without cert", args: []string{"--tls-client-ca-file", "ca.pem"}, want: "tls.client_ca_file"},
		{name: "cluster and addr", args: []string{"--redis-cluster", "127.0.0.1:7000,127.0.0.1:7001", "--redis-addr", "127.0.0.1:6379"}, want: "redis.cluster and redis.addr exclude each other"},
		{name: "cluster db", args: []string{"--redis-cluster", "127.0.0.1:7000", "--redis-db", "2"}, want: "redis.db: a Redis Cluster has only database 0"},
		{name: "cluster url db", args: []string{"--redis-addr", "redis+cluster://127.0.0.1:7000", "--redis-db", "2"}, want: "redis.db"},
		{name: "public without tokens", args: []string{"--listen", "0.0.0.0:7070"}, want: "no auth tokens are configured"},
		{name: "public without TLS", file: "listen: 0.0.0.0:7070\nauth:\n  tokens:\n  - {name: a, secret: s3cret-s3cret, roles: [ingest]}\n", want: "TLS is off"},
		{name: "unknown role", file: "auth:\n  tokens:\n  - {name: a, secret: s3cret-s3cret, roles: [root]}\n", want: "root"},
		{name: "group no request could name", file: "auth:\n  tokens:\n  - {name: a, secret: s3cret-s3cret, roles: [subscribe], groups: [SMS-Sender]}\n", want: `token "a": group "SMS-Sender"`},
		{name: "wait replicas word", args: []string{"--redis-addr", "127.0.0.1:6379", "--redis-wait-replicas", "some"}, want: `redis.wait_replicas: "some" is neither auto nor a number of replicas`},
		{name: "wait replicas negative", file: "redis:\n  addr: 127.0.0.1:6379\n  wait_replicas: -1\n", want: `redis.wait_replicas: "-1"`},
		{name: "wait replicas embedded", args: []string{"--redis-wait-replicas", "1"}, want: "embedded development store has no replicas"},
		{name: "wait timeout negative", args: []string{"--redis-addr", "127.0.0.1:6379", "--redis-wait-timeout", "-1s"}, want: "redis.wait_timeout: -1s is negative"},
		{name: "missing token file", args: []string{"--auth-token-file", "/nonexistent/tokens.yaml"}, want: "auth.token_file"},
		{name: "profile bound negative", args: []string{"--profile-dedup-window", "-1h"}, want: "profile.dedup_window: -1h0m0s is negative"},
		{name: "profile count negative", file: "profile:\n  max_sends: -5\n", want: "profile.max_sends: -5 is negative"},
		{name: "user locks", args: []string{"--redis-user-locks", "-2"}, want: "redis.user_locks: -2"},
		{name: "pprof on a network address", args: []string{"--metrics-listen", "0.0.0.0:9090", "--pprof"},
			want: "metrics.pprof: metrics.listen 0.0.0.0:9090 is not a loopback address"},
		{name: "pprof on all interfaces", file: "metrics:\n  listen: :9090\n  pprof: true\n", want: "--pprof-non-loopback"},
		{name: "negative stream idle", args: []string{"--stream-idle", "-1s"}, want: "stream_idle must not be negative"},
		{name: "burst seconds negative", file: "auth:\n  tokens:\n  - {name: a, secret: s3cret-s3cret, roles: [decide], decisions_per_second: 2, burst_seconds: -1}\n",
			want: "BurstSeconds is -1"},
		{name: "rules limit negative", args: []string{"--rules-max-triggers", "-1"}, want: "rules.max_triggers: -1 is negative"},
		{name: "rules limit negative in the file", file: "rules:\n  max_event_cost: -3\n", want: "rules.max_event_cost: -3 is negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := tc.args
			if tc.file != "" {
				args = append([]string{"--config", writeFile(t, "c.yaml", tc.file)}, args...)
			}
			_, err := Load(args, env(tc.env), io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Load error = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestLoadAllowsExposureOnlyWhenSafeOrInsecure(t *testing.T) {
	tokens := writeFile(t, "tokens.yaml", "tokens:\n- {name: shop, secret: abcdefabcdef, roles: [decide]}\n")
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"loopback without tokens", []string{"--listen", "127.0.0.1:0"}},
		{"localhost without tokens", []string{"--listen", "localhost:0"}},
		{"ipv6 loopback", []string{"--listen", "[::1]:0"}},
		{"public with --insecure", []string{"--listen", "0.0.0.0:0", "--insecure"}},
		{"public with tokens and --insecure (TLS terminated in front)", []string{"--listen", ":0", "--auth-token-file", tokens, "--insecure"}},
		{"pprof on loopback metrics", []string{"--metrics-listen", "127.0.0.1:0", "--pprof"}},
		{"pprof on a network address, forced", []string{"--metrics-listen", "0.0.0.0:0", "--pprof", "--pprof-non-loopback"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Load(tc.args, env(nil), io.Discard); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestTokenFileAndPasswordFileAreRead(t *testing.T) {
	tokens := writeFile(t, "tokens.yaml", "tokens:\n- name: sender\n  secret: fedcba987654\n  roles: [subscribe]\n  groups: [sms-sender, \"push-*\"]\n  events_per_second: 0\n")
	pw := writeFile(t, "pw", "hunter2-long\n")
	file := writeFile(t, "c.yaml", "auth:\n  tokens:\n  - {name: shop, secret: abcdefabcdef, roles: [decide], decisions_per_second: 100}\n")
	got, err := Load([]string{"--config", file, "--auth-token-file", tokens, "--redis-password-file", pw}, env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tk := range got.Config.Auth.Tokens {
		names = append(names, tk.Name)
	}
	if !slices.Equal(names, []string{"shop", "sender"}) {
		t.Errorf("tokens = %v, want shop (config) then sender (token file)", names)
	}
	if tokens, err := got.Config.tokens(); err != nil || len(tokens) != 2 || !slices.Equal(tokens[1].Groups, []string{"sms-sender", "push-*"}) {
		t.Errorf("the sender's groups are not the token file's (%v)", err)
	}
	if got.Config.Redis.Password != "hunter2-long" {
		t.Errorf("redis password = %q, want the file's first line", got.Config.Redis.Password)
	}
	if _, err := Load([]string{"--auth-token-file", writeFile(t, "bad.yaml", "tokens:\n- {name: x, secret: y, rolez: [admin]}\n")}, env(nil), io.Discard); err == nil ||
		!strings.Contains(err.Error(), "rolez") {
		t.Errorf("a token file with an unknown key: err = %v, want it named", err)
	}
}

func TestRedactedHidesEverySecret(t *testing.T) {
	c := Defaults()
	c.Redis.Addr = "redis://app:pa55word@10.0.0.1:6379/0"
	c.Redis.Password = "other-secret"
	c.Auth.Tokens = []TokenConfig{{Name: "shop", Secret: "tok-secret-1", Roles: []string{"decide"}}}
	out, err := c.Redacted()
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{"pa55word", "other-secret", "tok-secret-1"} {
		if bytes.Contains(out, []byte(secret)) {
			t.Errorf("--print-config shows %q:\n%s", secret, out)
		}
	}
	if c.Auth.Tokens[0].Secret != "tok-secret-1" {
		t.Error("Redacted changed the caller's tokens")
	}
	// What --print-config prints loads back (secrets aside).
	var back Config
	if err := decodeStrict(out, &back); err != nil {
		t.Fatalf("printed config does not load back: %v\n%s", err, out)
	}
	if back.Decision.Budget != c.Decision.Budget || back.Delivery.OutboxRetention != c.Delivery.OutboxRetention || back.Auth.Tokens[0].Name != "shop" {
		t.Errorf("printed config loads back as %+v", back)
	}
}

// yamlLeaves lists the YAML paths of the scalar (and list) fields of v.
func yamlLeaves(t reflect.Type, prefix string) []string {
	var out []string
	for f := range t.Fields() {
		tag, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if opts == "inline" {
			out = append(out, yamlLeaves(f.Type, prefix)...)
			continue
		}
		if tag == "" || tag == "-" {
			continue
		}
		key := prefix + tag
		if f.Type.Kind() == reflect.Struct && f.Type != reflect.TypeFor[time.Duration]() {
			out = append(out, yamlLeaves(f.Type, key+".")...)
			continue
		}
		out = append(out, key)
	}
	return out
}

// Every setting of the file can be overridden by a flag, and the example
// file names every setting with its default value.
func TestEverySettingHasAFlagAndIsInTheExampleFile(t *testing.T) {
	var c Config
	keys := map[string]bool{}
	for _, s := range c.settings() {
		keys[s.key] = true
	}
	leaves := yamlLeaves(reflect.TypeFor[Config](), "")
	for _, leaf := range leaves {
		if leaf == "auth.tokens" || leaf == "webhooks" { // lists of records: the file (or auth.token_file) only
			continue
		}
		if !keys[leaf] {
			t.Errorf("setting %s has no flag in Config.settings", leaf)
		}
	}
	if len(keys) != len(leaves)-2 {
		t.Errorf("settings lists %d keys, the struct has %d overridable ones", len(keys), len(leaves)-2)
	}

	example, err := os.ReadFile("../../deploy/nudged.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var fromFile Config
	if err := decodeStrict(example, &fromFile); err != nil {
		t.Fatalf("deploy/nudged.yaml: %v", err)
	}
	a, _ := yaml.Marshal(fromFile)
	b, _ := yaml.Marshal(Defaults())
	if !bytes.Equal(a, b) {
		t.Errorf("deploy/nudged.yaml differs from Defaults():\n--- file\n%s\n--- Defaults\n%s", a, b)
	}
	var raw map[string]any
	if err := yaml.Unmarshal(example, &raw); err != nil {
		t.Fatal(err)
	}
	for _, leaf := range leaves {
		if !hasPath(raw, strings.Split(leaf, ".")) {
			t.Errorf("deploy/nudged.yaml does not show %s", leaf)
		}
	}
}

func hasPath(m map[string]any, path []string) bool {
	v, ok := m[path[0]]
	if !ok || len(path) == 1 {
		return ok
	}
	sub, ok := v.(map[string]any)
	return ok && hasPath(sub, path[1:])
}

func TestLoadWaitReplicas(t *testing.T) {
	for _, tc := range []struct {
		name     string
		file     string
		args     []string
		env      map[string]string
		want     int
		wantAuto bool
		timeout  time.Duration
	}{
		{name: "default is auto", want: 0, wantAuto: true, timeout: time.Second},
		{name: "number in the file", file: "redis:\n  cluster: [127.0.0.1:7000]\n  wait_replicas: 1\n  wait_timeout: 250ms\n", want: 1, timeout: 250 * time.Millisecond},
		{name: "zero turns it off", file: "redis:\n  addr: 127.0.0.1:6379\n  wait_replicas: 0\n", want: 0, timeout: time.Second},
		{name: "auto spelled", args: []string{"--redis-addr", "127.0.0.1:6379", "--redis-wait-replicas", "AUTO"}, want: 0, wantAuto: true, timeout: time.Second},
		{name: "flag", args: []string{"--redis-addr", "127.0.0.1:6379", "--redis-wait-replicas", "2", "--redis-wait-timeout", "2s"}, want: 2, timeout: 2 * time.Second},
		{name: "env", args: []string{"--redis-addr", "127.0.0.1:6379"}, env: map[string]string{"NUDGE_REDIS_WAIT_REPLICAS": "0"}, want: 0, timeout: time.Second},
		{name: "embedded store, explicit 0", args: []string{"--redis-wait-replicas", "0"}, want: 0, timeout: time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := tc.args
			if tc.file != "" {
				args = append([]string{"--config", writeFile(t, "c.yaml", tc.file)}, args...)
			}
			got, err := Load(args, env(tc.env), io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			n, auto, err := got.Config.Redis.waitReplicas()
			if err != nil || n != tc.want || auto != tc.wantAuto {
				t.Errorf("waitReplicas() = %d, auto %v, %v; want %d, auto %v", n, auto, err, tc.want, tc.wantAuto)
			}
			if got.Config.Redis.WaitTimeout != tc.timeout {
				t.Errorf("wait_timeout %v, want %v", got.Config.Redis.WaitTimeout, tc.timeout)
			}
		})
	}
}

// TestProfileAndStoreSettingsReachTheirPackages: every profile and store
// setting of the file arrives in the options nudged builds the store and
// the server with.
func TestProfileAndStoreSettingsReachTheirPackages(t *testing.T) {
	file := `buckets: 64
profile:
  ttl: -1s
  retention: 48h
  minute_span: 2h
  hour_span: 30h
  max_future: 1m
  dedup_window: 36h
  dedup_max: 100
  max_series: 10
  fired_retention: 1h
  max_fired: 11
  send_retention: 2h
  max_sends: 12
  max_purchase_categories: 13
  max_timers: 14
  max_exposures: 15
  max_conversions: 16
redis:
  max_attempts: 5
  max_error_retries: -1
  max_redirects: 6
  backoff_min: 1ms
  backoff_max: 2ms
  max_group_users: 7
  parallelism: 8
  shards: 9
  user_locks: -1
  wait_timeout: 3s
`
	loaded, err := Load([]string{"--config", writeFile(t, "c.yaml", file)}, env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	c := loaded.Config
	gotStore := c.storeOptions(2, nil)
	wantStore := redisstore.Options{
		Buckets: 64, TTL: -time.Second, MaxAttempts: 5, MaxErrorRetries: -1, MaxRedirects: 6,
		BackoffMin: time.Millisecond, BackoffMax: 2 * time.Millisecond, MaxGroupUsers: 7, Parallelism: 8, Shards: 9,
		UserLocks: -1, WaitReplicas: 2, WaitTimeout: 3 * time.Second,
	}
	if !reflect.DeepEqual(gotStore, wantStore) {
		t.Errorf("store options %+v\nwant %+v", gotStore, wantStore)
	}
	gotLimits := c.serverConfig(nil, nil, nil, nil, nil).Limits
	wantLimits := profile.Limits{
		Retention: 48 * time.Hour, MinuteSpan: 2 * time.Hour, HourSpan: 30 * time.Hour, MaxFuture: time.Minute, DedupWindow: 36 * time.Hour, DedupMax: 100, MaxSeries: 10,
		FiredRetention: time.Hour, MaxFired: 11, SendRetention: 2 * time.Hour, MaxSends: 12, MaxPurchaseCategories: 13,
		MaxTimers: 14, MaxExposures: 15, MaxConversions: 16,
	}
	if gotLimits != wantLimits {
		t.Errorf("profile limits %+v\nwant %+v", gotLimits, wantLimits)
	}
	// Nothing said: the packages' own defaults.
	d := Defaults()
	if o := d.storeOptions(0, nil); o.TTL != redisstore.DefaultOptions().TTL || o.Shards != redisstore.DefaultOptions().Shards {
		t.Errorf("default store options %+v, want the store's defaults", o)
	}
	if l := d.serverConfig(nil, nil, nil, nil, nil).Limits; l != profile.DefaultLimits() {
		t.Errorf("default limits %+v, want profile.DefaultLimits()", l)
	}
}

// TestRulesLimitsReachTheRules: the rules settings are the limits the
// rules file is held to, at start, from the file, the environment or the
// flags.
func TestRulesLimitsReachTheRules(t *testing.T) {
	rules := writeFile(t, "rules.yaml", `version: 1
triggers:
  - {id: a, on: [view], action: {channel: sms, template: t}}
  - {id: b, on: [view], action: {channel: sms, template: t}}
`)
	for _, tc := range []struct {
		name string
		file string
		args []string
		env  map[string]string
		want string // "" for accepted
	}{
		{name: "defaults", args: []string{"--rules", rules}},
		{name: "file", file: "rules:\n  file: " + rules + "\n  max_triggers: 1\n", want: "the file has 2 triggers, over the limit of 1 (max_triggers)"},
		{name: "flag", args: []string{"--rules", rules, "--rules-max-bytes", "50"}, want: "over the limit of 50 (max_bytes)"},
		{name: "env", args: []string{"--rules", rules}, env: map[string]string{"NUDGE_RULES_MAX_EVENT_COST": "15"},
			want: "over the limit of 15 (max_event_cost)"},
		{name: "bundled rules too", args: []string{"--rules-max-offers", "1"}, want: "over the limit of 1 (max_offers)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := tc.args
			if tc.file != "" {
				args = append([]string{"--config", writeFile(t, "c.yaml", tc.file)}, args...)
			}
			loaded, err := Load(args, env(tc.env), io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			_, err = loadRules(loaded.Config)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("loadRules: %v", err)
			case tc.want != "" && (!errors.Is(err, decision.ErrInvalidRules) || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("loadRules: %v, want a refusal containing %q", err, tc.want)
			}
		})
	}
}

// TestRunRefusesRulesThatNeverEnd: nudged --rules /dev/zero stops at once
// with the size limit, instead of reading until memory runs out.
func TestRunRefusesRulesThatNeverEnd(t *testing.T) {
	if _, err := os.Stat("/dev/zero"); err != nil {
		t.Fatalf("nudged runs on Linux, which has /dev/zero: %v", err)
	}
	loaded, err := Load([]string{"--rules", "/dev/zero"}, env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	cfg := loaded.Config
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	err = Run(context.Background(), cfg, nil)
	want := "/dev/zero: the file is larger than the limit of 1048576 bytes (max_bytes): reading stopped after 1048577 bytes"
	if !errors.Is(err, decision.ErrInvalidRules) || !strings.Contains(err.Error(), want) {
		t.Errorf("Run: %v, want %q", err, want)
	}
}

// --version asks for nothing else: the configuration is not checked.
func TestLoadVersion(t *testing.T) {
	got, err := Load([]string{"--version", "--listen", "0.0.0.0:1"}, func(string) (string, bool) { return "", false }, io.Discard)
	if err != nil || !got.Version {
		t.Fatalf("Load(--version) = %+v, %v", got, err)
	}
}

func TestFitNearCache(t *testing.T) {
	const mib = 1 << 20
	tests := []struct {
		name       string
		max, limit int64
		want       int64
		wantCapped bool
	}{
		{"the defaults: 256 MiB beside a 150 MiB limit", 256 * mib, 150 * mib, 75 * mib, true},
		{"within half the limit", 64 * mib, 150 * mib, 64 * mib, false},
		{"exactly half", 75 * mib, 150 * mib, 75 * mib, false},
		{"no limit", 256 * mib, math.MaxInt64, 256 * mib, false},
		{"near-cache off", 0, 150 * mib, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, capped := fitNearCache(tt.max, tt.limit)
			if got != tt.want || capped != tt.wantCapped {
				t.Errorf("fitNearCache(%d, %d) = %d, %v; want %d, %v", tt.max, tt.limit, got, capped, tt.want, tt.wantCapped)
			}
		})
	}
}
