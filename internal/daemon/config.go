package daemon

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/nudge-dm/nudge/decision"
	"github.com/nudge-dm/nudge/delivery"
	"github.com/nudge-dm/nudge/profile"
	"github.com/nudge-dm/nudge/profile/redisstore"
	"github.com/nudge-dm/nudge/server"
)

// Config is everything nudged can be told: one YAML file (see
// deploy/nudged.yaml), every scalar of which a flag and a NUDGE_*
// environment variable override (see Settings). The zero value of a field
// means its default, so programs that build a Config by hand only set what
// they need; Defaults returns the defaults spelled out, as --print-config
// shows them.
type Config struct {
	// Listen is the gRPC address. Default 127.0.0.1:7070.
	Listen string `yaml:"listen"`
	// HTTP is the listener of the API over HTTP (Connect JSON, gRPC-Web),
	// /healthz and /readyz.
	HTTP HTTPConfig `yaml:"http"`
	// Insecure allows a non-loopback Listen (or HTTP.Listen) without TLS or
	// without tokens.
	// Default false: nudged refuses to serve plaintext or unauthenticated
	// calls beyond this machine unless told so explicitly.
	Insecure bool `yaml:"insecure"`
	// DrainTimeout bounds the graceful shutdown. Default 10s.
	DrainTimeout time.Duration `yaml:"drain_timeout"`
	// Buckets is the number of key buckets (redisstore.Options.Buckets), fixed
	// for the life of a deployment. Default 1024.
	Buckets int `yaml:"buckets"`

	Redis    RedisConfig    `yaml:"redis"`
	Profile  ProfileConfig  `yaml:"profile"`
	Rules    RulesConfig    `yaml:"rules"`
	Decision DecisionConfig `yaml:"decision"`
	// NearCache keeps decoded profiles in nudged for decisions, coherent
	// with Redis through client tracking (redisstore.NearCacheOptions).
	NearCache NearCacheConfig `yaml:"near_cache"`
	Delivery  DeliveryConfig  `yaml:"delivery"`
	Timers    TimersConfig    `yaml:"timers"`
	// Measurement paces campaign measurement (server.MeasureConfig).
	Measurement MeasurementConfig `yaml:"measurement"`
	Limits      LimitsConfig      `yaml:"limits"`
	TLS         TLSConfig         `yaml:"tls"`
	Auth        AuthConfig        `yaml:"auth"`
	Metrics     MetricsConfig     `yaml:"metrics"`
	Tracing     TracingConfig     `yaml:"tracing"`
	Log         LogConfig         `yaml:"log"`
	Runtime     RuntimeConfig     `yaml:"runtime"`

	// Webhooks deliver actions to HTTP endpoints, each from its own
	// consumer group (webhooks.go, package webhook). Default none.
	Webhooks []WebhookConfig `yaml:"webhooks"`

	// Logger receives the logs. Default: built from Log by Load, else
	// slog.Default().
	Logger *slog.Logger `yaml:"-"`
}

// RedisConfig says how to reach Redis.
type RedisConfig struct {
	// Addr is host:port or a redis:// (rediss:// for TLS) URL, which may
	// carry the user, password and database; or a Redis Cluster URL,
	// redis+cluster://[user:password@]host:port[,host:port...][?options]
	// (rediss+cluster:// for TLS). Empty (and no Cluster) starts the
	// embedded, in-process store: for development only, it keeps nothing
	// across restarts.
	Addr string `yaml:"addr"`
	// Cluster lists Redis Cluster seed nodes (host:port); the client learns
	// the other nodes from them. The other settings (user, password, TLS,
	// pool and timeouts, per node) apply; DB must be 0.
	Cluster []string `yaml:"cluster"`
	// Username is the ACL user. Default: none ("default").
	Username string `yaml:"username"`
	// Password authenticates to Redis. Prefer PasswordFile or the
	// NUDGE_REDIS_PASSWORD variable to a password in a config file.
	Password string `yaml:"password"`
	// PasswordFile holds the password (trailing newline ignored).
	PasswordFile string `yaml:"password_file"`
	// DB is the database number (standalone Redis only). Default 0.
	DB int `yaml:"db"`
	// PoolSize is the connections per node. Default 64, at least 64: every
	// ActionService subscriber holds one during its blocking read.
	PoolSize int `yaml:"pool_size"`
	// DialTimeout bounds connecting. Default 5s.
	DialTimeout time.Duration `yaml:"dial_timeout"`
	// ReadTimeout and WriteTimeout bound socket reads and writes of calls
	// without a shorter deadline of their own. Default 3s.
	ReadTimeout  time.Duration `yaml:"read_timeout"`
	WriteTimeout time.Duration `yaml:"write_timeout"`
	// WaitReplicas is how many replicas must confirm an ingest write before
	// its events are acknowledged: nudged sends WAIT after each EXEC, and
	// answers a batch whose write fewer replicas confirmed within
	// WaitTimeout as UNAVAILABLE, to be re-sent (see
	// redisstore.Options.WaitReplicas). Then an acknowledged event survives
	// the loss of a master when its replica is promoted; without WAIT,
	// replication is asynchronous and the last writes acknowledged before
	// a master dies can be missing from the promoted replica. "auto", or a
	// number; "0" turns WAIT off. Default "auto": at start-up nudged asks
	// every master for its replicas (INFO replication) and waits for 1 when
	// every master has at least one, else for none, with a warning (the
	// embedded store has none). It is decided once, at start-up, and
	// logged.
	WaitReplicas string `yaml:"wait_replicas"`
	// MaxAttempts bounds the transactions tried per user and ingest call
	// when other writers change the user's profile meanwhile (WATCH
	// conflicts, as between two nudged on hot users); past it the user's
	// events are answered ABORTED, to be re-sent. Default 64.
	MaxAttempts int `yaml:"max_attempts"`
	// WaitTimeout bounds each WAIT. Default 1s.
	WaitTimeout time.Duration `yaml:"wait_timeout"`
	// MaxErrorRetries bounds the retries of a transaction after a Redis
	// error (a cut connection); past it the batch answers UNAVAILABLE.
	// Default 3; -1: none.
	MaxErrorRetries int `yaml:"max_error_retries"`
	// MaxRedirects bounds, on a Redis Cluster, the retries of a
	// transaction whose slot is moving (reshard, failover). Default 200.
	MaxRedirects int `yaml:"max_redirects"`
	// BackoffMin and BackoffMax bound the jittered backoff between
	// attempts. Defaults 100µs and 20ms.
	BackoffMin time.Duration `yaml:"backoff_min"`
	BackoffMax time.Duration `yaml:"backoff_max"`
	// MaxGroupUsers is the most users written in one MULTI/EXEC. Default
	// 64; 1 commits every user alone.
	MaxGroupUsers int `yaml:"max_group_users"`
	// Parallelism is the transactions one shard commits at once. Default
	// 16.
	Parallelism int `yaml:"parallelism"`
	// Shards is the number of queues users are routed to by bucket (the
	// keyBy of DESIGN.md). Default 32.
	Shards int `yaml:"shards"`
	// UserLocks is the number of in-process lock stripes serialising
	// transactions on one user. Default 65536; -1: none.
	UserLocks int             `yaml:"user_locks"`
	TLS       ClientTLSConfig `yaml:"tls"`
}

// ProfileConfig says what a profile remembers (profile.Limits, whose
// fields are the other keys of this section, with their defaults) and how
// long it is kept; docs/rules.md explains what each bound means for rules.
type ProfileConfig struct {
	// TTL is how long an idle profile is kept in Redis. Default 2184h (91
	// days: the retention and a day, so that a 90-day window still finds
	// a user idle for 89 days); negative (-1s): never expire.
	TTL            time.Duration `yaml:"ttl"`
	profile.Limits `yaml:",inline"`
}

// ClientTLSConfig is TLS towards Redis.
type ClientTLSConfig struct {
	// Enabled turns TLS on (a rediss:// Addr also does). Default false.
	Enabled bool `yaml:"enabled"`
	// CAFile verifies the server. Default: the system roots.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are the client certificate, when Redis requires
	// one (tls-auth-clients yes).
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ServerName overrides the name verified in the server certificate.
	// Default: the host of Addr.
	ServerName string `yaml:"server_name"`
}

// RulesConfig says where the rules come from, and what a rules file may
// ask of nudged (decision.Limits, whose fields are the other keys of this
// section, with their defaults): a file over a limit is refused at start
// and at every reload like any bad file. docs/rules.md ("Limits") explains
// them for rule authors.
type RulesConfig struct {
	// File is the rules file. Empty uses the bundled examples/rules.yaml.
	File string `yaml:"file"`
	// Reload is how often the file is checked for changes; a file that does
	// not compile is refused and the old rules keep serving. Default 5s;
	// negative disables reloading (SIGHUP still reloads).
	Reload          time.Duration `yaml:"reload"`
	decision.Limits `yaml:",inline"`
}

// DecisionConfig configures GetDecision (server.Config).
type DecisionConfig struct {
	// Budget is the budget of a request that has none. Default 10ms.
	Budget time.Duration `yaml:"budget"`
	// BudgetMax is the largest budget a request may ask for. Default 1s.
	BudgetMax time.Duration `yaml:"budget_max"`
	// ReservationTTL is how long a reserved cap slot waits for its
	// confirming message_sent event. Default 5m.
	ReservationTTL time.Duration `yaml:"reservation_ttl"`
	// AuditSample is the share of decisions logged to the audit stream
	// nudge:audit, 0 to 1. Default 0.01 (the zero value means none).
	AuditSample float64 `yaml:"audit_sample"`
	// BreakerFailures is how many decision reads in a row must fail (Redis
	// unreachable, or a read with the default budget past its deadline)
	// for reads to stop for BreakerCooldown: decisions then degrade at
	// once, and then one read probes Redis. Default 3; -1: never stop.
	BreakerFailures int `yaml:"breaker_failures"`
	// BreakerCooldown is how long reads stop. Default 50ms.
	BreakerCooldown time.Duration `yaml:"breaker_cooldown"`
}

// NearCacheConfig configures the near-cache of profiles that decisions
// read (redisstore.NearCacheOptions).
type NearCacheConfig struct {
	// MaxMiB bounds its estimated memory, in MiB. Default 256; 0 turns it
	// off (every decision reads Redis).
	MaxMiB int `yaml:"max_mib"`
	// MaxSilence is the freshness bound: cached profiles are served only
	// while every master acknowledged a tracking heartbeat sent less than
	// this ago. Default 250ms.
	MaxSilence time.Duration `yaml:"max_silence"`
	// Heartbeat is how often each tracking connection is pinged. Default
	// 50ms.
	Heartbeat time.Duration `yaml:"heartbeat"`
}

// DeliveryConfig configures the outbox and ActionService.
type DeliveryConfig struct {
	// VisibilityTimeout: an action not acknowledged within it is
	// redelivered. Default 30s.
	VisibilityTimeout time.Duration `yaml:"visibility_timeout"`
	// MaxDeliveries of an action to a group before it goes to the
	// dead-letter stream nudge:dead. Default 5.
	MaxDeliveries int `yaml:"max_deliveries"`
	// MaxUnacked bounds the actions one subscriber holds unacknowledged.
	// Default 1000.
	MaxUnacked int `yaml:"max_unacked"`
	// OutboxRetention is how long acknowledged actions stay in the outbox
	// (for replay by a new group) before trimming. Default 24h.
	OutboxRetention time.Duration `yaml:"outbox_retention"`
	// TrimInterval is how often the outbox is trimmed. Default 1m.
	TrimInterval time.Duration `yaml:"trim_interval"`
	// GroupIdle is how long a consumer group may go without a member
	// reading or acknowledging before it is abandoned: trimming then no
	// longer keeps actions for it past OutboxRetention, so that a group
	// nobody reads any more cannot make the outbox grow for ever (see
	// delivery.Options.GroupIdle). Default 24h; negative: never abandon a
	// group, and keep what it has not acknowledged for ever.
	GroupIdle time.Duration `yaml:"group_idle"`
}

// TimersConfig paces the firing of journey steps and deferred actions
// (server.TimerConfig).
type TimersConfig struct {
	// Poll is the time between two polls of the due index when the last
	// one found nothing more. Default 100ms.
	Poll time.Duration `yaml:"poll"`
	// Batch is the most users fired per poll. Default 2000.
	Batch int `yaml:"batch"`
}

// MeasurementConfig paces campaign measurement (server.MeasureConfig).
type MeasurementConfig struct {
	// Refresh is how often the counters of the offers that compete by
	// Thompson sampling are read for the sampler: how far behind it may
	// be. Default 5s.
	Refresh time.Duration `yaml:"refresh"`
	// MetricsRefresh is how often every campaign's counters are read for
	// the campaign metrics. Default 30s.
	MetricsRefresh time.Duration `yaml:"metrics_refresh"`
	// ExposureQueue bounds the decisions' control exposures waiting to be
	// written; past it they are lost and counted. Default 10000.
	ExposureQueue int `yaml:"exposure_queue"`
}

// LimitsConfig bounds what one caller can make the server hold.
type LimitsConfig struct {
	// MaxMessageBytes is the largest request message accepted; larger ones
	// get RESOURCE_EXHAUSTED. Default 16 MiB.
	MaxMessageBytes int `yaml:"max_message_bytes"`
	// MaxInFlight is the batches of one ingest stream processed at once.
	// Default 8.
	MaxInFlight int `yaml:"max_in_flight"`
	// MaxInFlightEvents is the events being applied at once over all
	// streams and Publish calls; a batch waits for room and its stream is
	// not read meanwhile. Default 32768.
	MaxInFlightEvents int `yaml:"max_in_flight_events"`
	// MaxPendingReads bounds the decision reads waiting on Redis; past it
	// decisions degrade at once. Default 1024.
	MaxPendingReads int `yaml:"max_pending_reads"`
	// MaxRecvBytesInFlight bounds the bytes of batch requests (Publish,
	// BatchGetDecisions) being received at once, half per token; then
	// calls wait for room
	// (server.Config.MaxRecvBytesInFlight). Default 128 MiB.
	MaxRecvBytesInFlight int `yaml:"max_recv_bytes_in_flight"`
	// MaxStreamsPerConn bounds the calls open at once on one connection.
	// Default 100.
	MaxStreamsPerConn int `yaml:"max_streams_per_conn"`
	// StreamWorkers is the goroutines kept to serve calls, whose grown
	// stacks calls reuse (server.Config.StreamWorkers). Default 16; -1: a
	// new goroutine per call.
	StreamWorkers int `yaml:"stream_workers"`
	// MaxConnectionIdle closes connections without calls for this long.
	// Default 15m.
	MaxConnectionIdle time.Duration `yaml:"max_connection_idle"`
	// KeepaliveTime and KeepaliveTimeout: a silent connection is pinged
	// after KeepaliveTime and closed if the ping is not answered within
	// KeepaliveTimeout. Defaults 2m, 20s.
	KeepaliveTime    time.Duration `yaml:"keepalive_time"`
	KeepaliveTimeout time.Duration `yaml:"keepalive_timeout"`
	// KeepaliveMinTime is the shortest ping interval allowed of clients.
	// Default 10s.
	KeepaliveMinTime time.Duration `yaml:"keepalive_min_time"`
	// StreamIdle ends an ingest stream without a batch for this long.
	// Default 10m.
	StreamIdle time.Duration `yaml:"stream_idle"`
}

// RuntimeConfig tunes the Go runtime of nudged (see ApplyRuntime).
type RuntimeConfig struct {
	// GCPercent is the garbage collector's growth target (GOGC), used
	// unless the GOGC variable is set. Default 400: the collector runs a
	// quarter as often as Go's default 100, worth about a fifth more ingest
	// throughput (BENCHMARKS.md); MemoryLimitMiB keeps the heap bounded.
	// -1 turns the target off (MemoryLimitMiB alone then paces the
	// collector).
	GCPercent int `yaml:"gc_percent"`
	// MemoryLimitMiB is the soft memory limit (GOMEMLIMIT) in MiB, used
	// unless the GOMEMLIMIT variable is set: the collector runs sooner as
	// the heap nears it. Default 150 (the ingest benchmark then peaks at
	// about 175 MiB resident); set it to about three quarters of the
	// container's memory limit. -1: no limit.
	MemoryLimitMiB int `yaml:"memory_limit_mib"`
}

// TLSConfig is the gRPC listener's TLS. The files are re-read when they
// change (checked at each new connection), so certificates rotate without
// a restart.
type TLSConfig struct {
	// CertFile and KeyFile turn TLS on. Default: plaintext.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ClientCAFile turns on mutual TLS: clients must present a certificate
	// signed by one of these CAs.
	ClientCAFile string `yaml:"client_ca_file"`
}

// Enabled says whether the listener uses TLS.
func (c TLSConfig) Enabled() bool { return c.CertFile != "" }

// AuthConfig lists the bearer tokens callers must present. With no tokens
// the server is open, which nudged allows on a loopback Listen only (or
// with Insecure).
type AuthConfig struct {
	Tokens []TokenConfig `yaml:"tokens"`
	// TokenFile is a YAML file with more tokens, as `tokens: [...]`, for
	// keeping secrets out of the main config.
	TokenFile string `yaml:"token_file"`
}

// TokenConfig is one bearer token (server.Token).
type TokenConfig struct {
	// Name identifies the token in logs and errors; never the secret.
	Name string `yaml:"name"`
	// Secret is the token callers send as "authorization: Bearer <secret>".
	Secret string `yaml:"secret"`
	// Roles: ingest, decide, send, explain, subscribe, features, admin,
	// console (see server.Role).
	Roles []string `yaml:"roles"`
	// Groups are the consumer groups the token may subscribe to and
	// acknowledge for (role subscribe): names, or prefixes ending in "*"
	// ("sms-*"; "*" alone: every group). Default none: a subscribe token
	// without groups may use no group (see server.Token.Groups).
	Groups []string `yaml:"groups"`
	// EventsPerSecond and DecisionsPerSecond limit the token's rate
	// (RESOURCE_EXHAUSTED past it). 0: unlimited.
	EventsPerSecond    float64 `yaml:"events_per_second"`
	DecisionsPerSecond float64 `yaml:"decisions_per_second"`
	// BurstSeconds is how many seconds of its rates the token may use at
	// once; a larger batch is refused (INVALID_ARGUMENT). Default 1.
	BurstSeconds float64 `yaml:"burst_seconds"`
}

// HTTPConfig configures the HTTP listener of the API.
type HTTPConfig struct {
	// Listen is the HTTP address that serves every RPC of the gRPC port
	// with the Connect protocol (JSON or protobuf bodies: POST
	// /nudge.v1.DecisionService/GetDecision) and gRPC-Web, plus GET
	// /healthz and /readyz. HTTPListenAuto (the default; also when empty):
	// on loopback next to the gRPC port, its port plus 10 (127.0.0.1:7080
	// for 127.0.0.1:7070; port 0, any free port, when the gRPC port is 0);
	// HTTPListenOff: none; otherwise host:port. It uses the gRPC port's
	// TLS settings, tokens and limits.
	Listen string `yaml:"listen"`
	// Console serves the web console under /console/ on this listener
	// (package console). Default on.
	Console ConsoleConfig `yaml:"console"`
}

// ConsoleConfig configures the web console.
type ConsoleConfig struct {
	// Enabled serves it. Default true.
	Enabled bool `yaml:"enabled"`
	// SessionTTL signs a session out this long after sign-in. Default 12h.
	SessionTTL time.Duration `yaml:"session_ttl"`
	// IdleTimeout signs a session out after this long without a request.
	// Default 1h.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
}

// The special values of HTTPConfig.Listen.
const (
	HTTPListenAuto = "auto"
	HTTPListenOff  = "off"
)

// MetricsConfig configures the HTTP listener for /metrics.
type MetricsConfig struct {
	// Listen is the HTTP address of /metrics. Empty: off.
	Listen string `yaml:"listen"`
	// Pprof serves net/http/pprof under /debug/pprof/ on the same
	// listener. Default false. Profiles show the heap's contents, so on a
	// non-loopback Listen it also needs PprofNonLoopback.
	Pprof bool `yaml:"pprof"`
	// PprofNonLoopback allows Pprof on a non-loopback Listen. Default
	// false: nudged refuses to start with pprof on a network address.
	PprofNonLoopback bool `yaml:"pprof_non_loopback"`
}

// LogConfig configures the logs.
type LogConfig struct {
	// Format is text or json. Default text.
	Format string `yaml:"format"`
	// Level is debug, info, warn or error. Default info.
	Level string `yaml:"level"`
	// UserIDs logs user ids in clear, for debugging. Default false: logs
	// carry a keyed hash of the id instead.
	UserIDs bool `yaml:"user_ids"`
}

// Defaults returns the configuration nudged runs with when told nothing.
// What belongs to a package (the store, the profile limits, the server,
// delivery) is that package's default; the rest is nudged's own.
func Defaults() Config {
	store, srv, dlv := redisstore.DefaultOptions(), server.DefaultConfig(), delivery.DefaultOptions()
	return Config{
		Listen:       "127.0.0.1:7070",
		HTTP:         HTTPConfig{Listen: HTTPListenAuto, Console: ConsoleConfig{Enabled: true, SessionTTL: 12 * time.Hour, IdleTimeout: time.Hour}},
		DrainTimeout: 10 * time.Second,
		Buckets:      store.Buckets,
		Redis: RedisConfig{
			PoolSize:        64,
			DialTimeout:     5 * time.Second,
			ReadTimeout:     3 * time.Second,
			WriteTimeout:    3 * time.Second,
			WaitReplicas:    WaitReplicasAuto,
			WaitTimeout:     store.WaitTimeout,
			MaxAttempts:     store.MaxAttempts,
			MaxErrorRetries: store.MaxErrorRetries,
			MaxRedirects:    store.MaxRedirects,
			BackoffMin:      store.BackoffMin,
			BackoffMax:      store.BackoffMax,
			MaxGroupUsers:   store.MaxGroupUsers,
			Parallelism:     store.Parallelism,
			Shards:          store.Shards,
			UserLocks:       store.UserLocks,
		},
		Profile: ProfileConfig{TTL: store.TTL, Limits: profile.DefaultLimits()},

		Rules: RulesConfig{Reload: 5 * time.Second, Limits: decision.DefaultLimits()},
		Decision: DecisionConfig{
			Budget:          srv.DefaultBudget,
			BudgetMax:       srv.MaxBudget,
			ReservationTTL:  srv.ReservationTTL,
			AuditSample:     0.01,
			BreakerFailures: srv.BreakerFailures,
			BreakerCooldown: srv.BreakerCooldown,
		},
		NearCache: NearCacheConfig{MaxMiB: 256, MaxSilence: 250 * time.Millisecond, Heartbeat: 50 * time.Millisecond},
		Delivery: DeliveryConfig{
			VisibilityTimeout: dlv.Visibility,
			MaxDeliveries:     dlv.MaxDeliveries,
			MaxUnacked:        srv.MaxUnacked,
			OutboxRetention:   24 * time.Hour,
			TrimInterval:      time.Minute,
			GroupIdle:         dlv.GroupIdle,
		},
		Timers:      TimersConfig{Poll: 100 * time.Millisecond, Batch: 2000},
		Measurement: MeasurementConfig{Refresh: 5 * time.Second, MetricsRefresh: 30 * time.Second, ExposureQueue: srv.ExposureQueue},
		Limits: LimitsConfig{
			MaxMessageBytes:   srv.MaxRecvMsgBytes,
			MaxInFlight:       srv.MaxInFlight,
			MaxInFlightEvents: srv.MaxInFlightEvents,
			MaxPendingReads:   srv.MaxPendingReads,

			MaxRecvBytesInFlight: srv.MaxRecvBytesInFlight,
			MaxStreamsPerConn:    srv.MaxStreamsPerConn,
			StreamWorkers:        srv.StreamWorkers,
			MaxConnectionIdle:    srv.MaxConnectionIdle,
			KeepaliveTime:        srv.KeepaliveTime,
			KeepaliveTimeout:     srv.KeepaliveTimeout,
			KeepaliveMinTime:     srv.KeepaliveMinTime,
			StreamIdle:           srv.StreamIdle,
		},
		Tracing: TracingConfig{SampleRatio: 1, ServiceName: "nudged"},
		Log:     LogConfig{Format: "text", Level: "info"},
		Runtime: RuntimeConfig{GCPercent: 400, MemoryLimitMiB: 150},
	}
}

// setting is one overridable scalar of Config: its YAML path, the flag that
// overrides it (and so the variable NUDGE_<FLAG>), and the field.
type setting struct {
	key, flag, usage string
	bind             func(fs *flag.FlagSet, name, usage string)
}

func str(p *string) func(*flag.FlagSet, string, string) {
	return func(fs *flag.FlagSet, n, u string) { fs.StringVar(p, n, *p, u) }
}
func boolean(p *bool) func(*flag.FlagSet, string, string) {
	return func(fs *flag.FlagSet, n, u string) { fs.BoolVar(p, n, *p, u) }
}
func integer(p *int) func(*flag.FlagSet, string, string) {
	return func(fs *flag.FlagSet, n, u string) { fs.IntVar(p, n, *p, u) }
}
func float(p *float64) func(*flag.FlagSet, string, string) {
	return func(fs *flag.FlagSet, n, u string) { fs.Float64Var(p, n, *p, u) }
}
func duration(p *time.Duration) func(*flag.FlagSet, string, string) {
	return func(fs *flag.FlagSet, n, u string) { fs.DurationVar(p, n, *p, u) }
}
func list(p *[]string) func(*flag.FlagSet, string, string) {
	return func(fs *flag.FlagSet, n, u string) {
		fs.Func(n, u+" (comma-separated)", func(v string) error {
			*p = nil
			for s := range strings.SplitSeq(v, ",") {
				if s = strings.TrimSpace(s); s != "" {
					*p = append(*p, s)
				}
			}
			return nil
		})
	}
}

// settings lists every scalar setting of c. The flag names of settings that
// predate the config file are kept.
func (c *Config) settings() []setting {
	return []setting{
		{"listen", "listen", "gRPC listen address", str(&c.Listen)},
		{"http.listen", "http-listen", "HTTP/JSON (Connect, gRPC-Web), /healthz and /readyz address: auto (loopback, the gRPC port + 10), off, or host:port", str(&c.HTTP.Listen)},
		{"http.console.enabled", "console", "serve the web console under /console/ on the HTTP listener", boolean(&c.HTTP.Console.Enabled)},
		{"http.console.session_ttl", "console-session-ttl", "a console session ends this long after sign-in", duration(&c.HTTP.Console.SessionTTL)},
		{"http.console.idle_timeout", "console-idle-timeout", "a console session ends after this long without a request", duration(&c.HTTP.Console.IdleTimeout)},
		{"insecure", "insecure", "allow a non-loopback listen address without TLS or without tokens", boolean(&c.Insecure)},
		{"drain_timeout", "drain-timeout", "graceful shutdown limit", duration(&c.DrainTimeout)},
		{"buckets", "buckets", "key buckets (hash tags); fixed for the life of a deployment", integer(&c.Buckets)},

		{"redis.addr", "redis-addr", "Redis host:port or redis:// (rediss://) URL; empty starts the embedded, NOT durable, development store", str(&c.Redis.Addr)},
		{"redis.cluster", "redis-cluster", "Redis Cluster seed nodes host:port", list(&c.Redis.Cluster)},
		{"redis.username", "redis-username", "Redis ACL user", str(&c.Redis.Username)},
		{"redis.password", "redis-password", "Redis password (prefer --redis-password-file or NUDGE_REDIS_PASSWORD)", str(&c.Redis.Password)},
		{"redis.password_file", "redis-password-file", "file holding the Redis password", str(&c.Redis.PasswordFile)},
		{"redis.db", "redis-db", "Redis database number", integer(&c.Redis.DB)},
		{"redis.pool_size", "redis-pool-size", "Redis connections (at least 64)", integer(&c.Redis.PoolSize)},
		{"redis.dial_timeout", "redis-dial-timeout", "Redis connect timeout", duration(&c.Redis.DialTimeout)},
		{"redis.read_timeout", "redis-read-timeout", "Redis socket read timeout", duration(&c.Redis.ReadTimeout)},
		{"redis.write_timeout", "redis-write-timeout", "Redis socket write timeout", duration(&c.Redis.WriteTimeout)},
		{"redis.wait_replicas", "redis-wait-replicas", "replicas that must confirm each ingest write before it is acknowledged (WAIT): auto (1 when every master has a replica, else 0), a number, or 0 for none", str(&c.Redis.WaitReplicas)},
		{"redis.max_attempts", "redis-max-attempts", "transactions tried per user and ingest call on WATCH conflicts before its events answer ABORTED", integer(&c.Redis.MaxAttempts)},
		{"redis.wait_timeout", "redis-wait-timeout", "bound of each WAIT for replicas; past it the batch answers UNAVAILABLE and is re-sent", duration(&c.Redis.WaitTimeout)},
		{"redis.max_error_retries", "redis-max-error-retries", "retries of a transaction after a Redis error before its batch answers UNAVAILABLE (-1: none)", integer(&c.Redis.MaxErrorRetries)},
		{"redis.max_redirects", "redis-max-redirects", "retries of a transaction whose Redis Cluster slot is moving", integer(&c.Redis.MaxRedirects)},
		{"redis.backoff_min", "redis-backoff-min", "least backoff between transaction attempts", duration(&c.Redis.BackoffMin)},
		{"redis.backoff_max", "redis-backoff-max", "most backoff between transaction attempts", duration(&c.Redis.BackoffMax)},
		{"redis.max_group_users", "redis-max-group-users", "users written in one MULTI/EXEC (1: each alone)", integer(&c.Redis.MaxGroupUsers)},
		{"redis.parallelism", "redis-parallelism", "transactions one shard commits at once", integer(&c.Redis.Parallelism)},
		{"redis.shards", "redis-shards", "queues users are routed to by bucket", integer(&c.Redis.Shards)},
		{"redis.user_locks", "redis-user-locks", "in-process lock stripes serialising transactions on one user (-1: none)", integer(&c.Redis.UserLocks)},

		{"profile.ttl", "profile-ttl", "how long an idle profile is kept (negative: forever)", duration(&c.Profile.TTL)},
		{"profile.retention", "profile-retention", "how far back events are accepted, counted per day and deduplicated: the longest window", duration(&c.Profile.Retention)},
		{"profile.minute_span", "profile-minute-span", "how long events are counted per minute", duration(&c.Profile.MinuteSpan)},
		{"profile.hour_span", "profile-hour-span", "how long events are counted per hour", duration(&c.Profile.HourSpan)},
		{"profile.max_future", "profile-max-future", "how far ahead of the clock an event may be", duration(&c.Profile.MaxFuture)},
		{"profile.dedup_window", "profile-dedup-window", "ignored (event ids are remembered for the retention); read so that older files load", duration(&c.Profile.DedupWindow)},
		{"profile.dedup_max", "profile-dedup-max", "most event ids remembered per user", integer(&c.Profile.DedupMax)},
		{"profile.max_series", "profile-max-series", "most (type, category) series kept per user", integer(&c.Profile.MaxSeries)},
		{"profile.fired_retention", "profile-fired-retention", "how long trigger cooldown marks are kept", duration(&c.Profile.FiredRetention)},
		{"profile.max_fired", "profile-max-fired", "most trigger cooldown marks kept per user", integer(&c.Profile.MaxFired)},
		{"profile.send_retention", "profile-send-retention", "how long message_sent records and last purchases are kept", duration(&c.Profile.SendRetention)},
		{"profile.max_sends", "profile-max-sends", "most message_sent records kept per user", integer(&c.Profile.MaxSends)},
		{"profile.max_purchase_categories", "profile-max-purchase-categories", "most categories whose last purchase is kept per user", integer(&c.Profile.MaxPurchaseCategories)},
		{"profile.max_timers", "profile-max-timers", "most pending journey steps and deferred actions per user", integer(&c.Profile.MaxTimers)},
		{"profile.max_exposures", "profile-max-exposures", "most open attribution windows (campaigns exposed to) per user", integer(&c.Profile.MaxExposures)},
		{"profile.max_conversions", "profile-max-conversions", "most recent conversion events kept per user for exposures recorded after them", integer(&c.Profile.MaxConversions)},
		{"redis.tls.enabled", "redis-tls", "connect to Redis with TLS", boolean(&c.Redis.TLS.Enabled)},
		{"redis.tls.ca_file", "redis-tls-ca-file", "CA bundle verifying Redis (default: system roots)", str(&c.Redis.TLS.CAFile)},
		{"redis.tls.cert_file", "redis-tls-cert-file", "client certificate for Redis", str(&c.Redis.TLS.CertFile)},
		{"redis.tls.key_file", "redis-tls-key-file", "client key for Redis", str(&c.Redis.TLS.KeyFile)},
		{"redis.tls.server_name", "redis-tls-server-name", "name verified in Redis's certificate", str(&c.Redis.TLS.ServerName)},

		{"rules.file", "rules", "rules file (YAML); empty uses the bundled examples/rules.yaml", str(&c.Rules.File)},
		{"rules.reload", "rules-reload", "how often to check the rules file for changes (negative: never)", duration(&c.Rules.Reload)},
		{"rules.max_bytes", "rules-max-bytes", "largest rules file, in bytes (no more is ever read)", integer(&c.Rules.MaxBytes)},
		{"rules.max_yaml_nodes", "rules-max-yaml-nodes", "most YAML nodes of the rules file, aliases expanded", integer(&c.Rules.MaxYAMLNodes)},
		{"rules.max_triggers", "rules-max-triggers", "most triggers of the rules file", integer(&c.Rules.MaxTriggers)},
		{"rules.max_offers", "rules-max-offers", "most offers of the rules file", integer(&c.Rules.MaxOffers)},
		{"rules.max_features", "rules-max-features", "most features of the rules file", integer(&c.Rules.MaxFeatures)},
		{"rules.max_policies", "rules-max-policies", "most frequency caps and quiet hours of the rules file", integer(&c.Rules.MaxPolicies)},
		{"rules.max_expressions", "rules-max-expressions", "most CEL expressions of the rules file", integer(&c.Rules.MaxExpressions)},
		{"rules.max_expression_length", "rules-max-expression-length", "longest CEL expression, in characters", integer(&c.Rules.MaxExpressionLength)},
		{"rules.max_expression_bytes", "rules-max-expression-bytes", "most bytes of CEL expressions in the rules file, together", integer(&c.Rules.MaxExpressionBytes)},
		{"rules.max_event_cost", "rules-max-event-cost", "most estimated cost of the triggers one event type reaches (CEL cost units)", integer(&c.Rules.MaxEventCost)},
		{"rules.max_decision_cost", "rules-max-decision-cost", "most estimated cost of the offers one channel reaches (CEL cost units)", integer(&c.Rules.MaxDecisionCost)},

		{"decision.budget", "decision-budget", "default GetDecision budget", duration(&c.Decision.Budget)},
		{"decision.budget_max", "decision-budget-max", "largest budget a request may ask for", duration(&c.Decision.BudgetMax)},
		{"decision.reservation_ttl", "reservation-ttl", "how long a reserved cap slot waits for its message_sent confirmation", duration(&c.Decision.ReservationTTL)},
		{"decision.audit_sample", "audit-sample", "share of decisions logged to the audit stream nudge:audit (0 to 1)", float(&c.Decision.AuditSample)},
		{"decision.breaker_failures", "breaker-failures", "decision reads failed in a row that stop reads for breaker_cooldown (-1: never)", integer(&c.Decision.BreakerFailures)},
		{"decision.breaker_cooldown", "breaker-cooldown", "how long decision reads stop after breaker_failures failed, before one probes", duration(&c.Decision.BreakerCooldown)},

		{"near_cache.max_mib", "near-cache-mib", "memory of the near-cache of profiles decisions read, in MiB, at most half of the memory limit (0: off, every decision reads Redis)", integer(&c.NearCache.MaxMiB)},
		{"near_cache.max_silence", "near-cache-max-silence", "freshness bound: cached profiles are served only while Redis acknowledged a tracking heartbeat sent less than this ago", duration(&c.NearCache.MaxSilence)},
		{"near_cache.heartbeat", "near-cache-heartbeat", "how often each tracking connection is pinged", duration(&c.NearCache.Heartbeat)},

		{"delivery.visibility_timeout", "visibility-timeout", "an action not acknowledged within this is redelivered", duration(&c.Delivery.VisibilityTimeout)},
		{"delivery.max_deliveries", "max-deliveries", "deliveries of an action to a group before it goes to the dead-letter stream nudge:dead", integer(&c.Delivery.MaxDeliveries)},
		{"delivery.max_unacked", "max-unacked", "actions a subscriber may hold unacknowledged before delivery to it pauses", integer(&c.Delivery.MaxUnacked)},
		{"delivery.outbox_retention", "outbox-retention", "how long acknowledged actions stay in the outbox", duration(&c.Delivery.OutboxRetention)},
		{"delivery.trim_interval", "trim-interval", "how often the outbox is trimmed", duration(&c.Delivery.TrimInterval)},
		{"delivery.group_idle", "group-idle", "a consumer group no member read from or acknowledged for this long is abandoned: trimming no longer keeps actions for it past outbox_retention (negative: never)", duration(&c.Delivery.GroupIdle)},

		{"timers.poll", "timers-poll", "time between two polls of the due journey steps when the last found nothing more", duration(&c.Timers.Poll)},
		{"timers.batch", "timers-batch", "most users whose due timers one poll fires", integer(&c.Timers.Batch)},

		{"measurement.refresh", "measurement-refresh", "how often the thompson offers' counters are read for their sampler", duration(&c.Measurement.Refresh)},
		{"measurement.metrics_refresh", "measurement-metrics-refresh", "how often every campaign's counters are read for the campaign metrics", duration(&c.Measurement.MetricsRefresh)},
		{"measurement.exposure_queue", "exposure-queue", "decisions' control exposures waiting to be written before they are lost (and counted)", integer(&c.Measurement.ExposureQueue)},

		{"limits.max_message_bytes", "max-message-bytes", "largest request message accepted", integer(&c.Limits.MaxMessageBytes)},
		{"limits.max_in_flight", "max-in-flight", "batches of one ingest stream processed at once", integer(&c.Limits.MaxInFlight)},
		{"limits.max_in_flight_events", "max-in-flight-events", "events applied at once over all streams; then batches wait and their streams are not read", integer(&c.Limits.MaxInFlightEvents)},
		{"limits.max_pending_reads", "max-pending-reads", "decision reads waiting on Redis before decisions degrade at once", integer(&c.Limits.MaxPendingReads)},
		{"limits.max_recv_bytes_in_flight", "max-recv-bytes-in-flight", "bytes of batch requests (Publish, BatchGetDecisions) being received at once, half per token", integer(&c.Limits.MaxRecvBytesInFlight)},
		{"limits.max_streams_per_conn", "max-streams-per-conn", "calls open at once on one connection", integer(&c.Limits.MaxStreamsPerConn)},
		{"limits.stream_workers", "stream-workers", "goroutines kept to serve calls, whose grown stacks calls reuse (-1: a new goroutine per call)", integer(&c.Limits.StreamWorkers)},
		{"limits.max_connection_idle", "max-connection-idle", "close connections without calls for this long", duration(&c.Limits.MaxConnectionIdle)},
		{"limits.keepalive_time", "keepalive-time", "ping a silent connection after this long", duration(&c.Limits.KeepaliveTime)},
		{"limits.keepalive_timeout", "keepalive-timeout", "close a connection whose ping is not answered within this", duration(&c.Limits.KeepaliveTimeout)},
		{"limits.keepalive_min_time", "keepalive-min-time", "shortest ping interval allowed of clients", duration(&c.Limits.KeepaliveMinTime)},
		{"limits.stream_idle", "stream-idle", "end an ingest stream without a batch for this long", duration(&c.Limits.StreamIdle)},

		{"tls.cert_file", "tls-cert-file", "TLS certificate of the gRPC listener (turns TLS on)", str(&c.TLS.CertFile)},
		{"tls.key_file", "tls-key-file", "TLS key of the gRPC listener", str(&c.TLS.KeyFile)},
		{"tls.client_ca_file", "tls-client-ca-file", "CA bundle for client certificates (turns mutual TLS on)", str(&c.TLS.ClientCAFile)},

		{"auth.token_file", "auth-token-file", "YAML file with bearer tokens (tokens: [{name, secret, roles, groups, ...}])", str(&c.Auth.TokenFile)},

		{"metrics.listen", "metrics-listen", "HTTP address for /metrics (empty: off)", str(&c.Metrics.Listen)},
		{"metrics.pprof", "pprof", "serve /debug/pprof/ on the metrics listener", boolean(&c.Metrics.Pprof)},
		{"metrics.pprof_non_loopback", "pprof-non-loopback", "allow --pprof on a non-loopback metrics listener (profiles show memory contents)", boolean(&c.Metrics.PprofNonLoopback)},

		{"tracing.endpoint", "otlp-endpoint", "OTLP/gRPC collector host:port for traces (empty: tracing off)", str(&c.Tracing.Endpoint)},
		{"tracing.insecure", "otlp-insecure", "send traces to the collector in plaintext", boolean(&c.Tracing.Insecure)},
		{"tracing.sample_ratio", "trace-sample-ratio", "share of new traces sampled (0 to 1)", float(&c.Tracing.SampleRatio)},
		{"tracing.service_name", "trace-service-name", "service.name of the spans", str(&c.Tracing.ServiceName)},

		{"log.format", "log-format", "log format: text or json", str(&c.Log.Format)},
		{"log.level", "log-level", "log level: debug, info, warn, error", str(&c.Log.Level)},
		{"log.user_ids", "log-user-ids", "log user ids in clear (debugging only)", boolean(&c.Log.UserIDs)},

		{"runtime.gc_percent", "gc-percent", "garbage collector target (GOGC, which overrides it); -1: off", integer(&c.Runtime.GCPercent)},
		{"runtime.memory_limit_mib", "memory-limit-mib", "soft memory limit in MiB (GOMEMLIMIT, which overrides it); -1: none", integer(&c.Runtime.MemoryLimitMiB)},
	}
}

// EnvName is the environment variable that overrides a flag.
func EnvName(flagName string) string {
	return "NUDGE_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// ErrHelp is returned by Load when the usage was asked for (-h).
var ErrHelp = flag.ErrHelp

// Loaded is the outcome of Load.
type Loaded struct {
	Config Config
	// PrintConfig is set when --print-config was given: show
	// Config.Redacted() and exit.
	PrintConfig bool
	// Version is set when --version was given: print the binary's
	// version and exit (Config is then not checked).
	Version bool
}

// Load builds the configuration from, lowest precedence first: Defaults,
// the YAML file named by --config (or NUDGE_CONFIG), NUDGE_* variables
// (lookupEnv, usually os.LookupEnv), then the flags in args. Unknown keys in
// the file, unknown flags and invalid values are errors; so is a
// configuration that Validate refuses. Usage goes to usage (os.Stderr).
func Load(args []string, lookupEnv func(string) (string, bool), usage io.Writer) (Loaded, error) {
	cfg := Defaults()
	path, err := configPath(args, lookupEnv)
	if err != nil {
		return Loaded{}, err
	}
	if path != "" {
		if err := cfg.readFile(path); err != nil {
			return Loaded{}, err
		}
	}
	fs := flag.NewFlagSet("nudged", flag.ContinueOnError)
	fs.SetOutput(usage)
	fs.String("config", path, "YAML config file (every setting; flags and NUDGE_* variables override it)")
	printConfig := fs.Bool("print-config", false, "print the effective configuration (secrets redacted) and exit")
	version := fs.Bool("version", false, "print nudged's version (module, VCS revision, Go) and exit")
	for _, s := range cfg.settings() {
		s.bind(fs, s.flag, s.usage+" ["+s.key+"]")
	}
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name == "config" || envErr != nil {
			return
		}
		if v, ok := lookupEnv(EnvName(f.Name)); ok {
			if err := f.Value.Set(v); err != nil {
				envErr = fmt.Errorf("%s=%q: %w", EnvName(f.Name), v, err)
			}
		}
	})
	if envErr != nil {
		return Loaded{}, envErr
	}
	if err := fs.Parse(args); err != nil {
		return Loaded{}, err
	}
	if *version {
		return Loaded{Version: true}, nil
	}
	if fs.NArg() > 0 {
		return Loaded{}, fmt.Errorf("unexpected arguments %q: every setting is a flag (see -h)", fs.Args())
	}
	if err := cfg.resolveFiles(); err != nil {
		return Loaded{}, err
	}
	if err := cfg.Validate(); err != nil {
		return Loaded{}, err
	}
	return Loaded{Config: cfg, PrintConfig: *printConfig}, nil
}

// configPath finds --config in args (it must be known before the other
// flags, whose defaults come from the file), else NUDGE_CONFIG.
func configPath(args []string, lookupEnv func(string) (string, bool)) (string, error) {
	for i, a := range args {
		if a == "--" {
			break
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") || name != "config" {
			continue
		}
		if hasValue {
			return value, nil
		}
		if i+1 >= len(args) {
			return "", errors.New("flag needs an argument: -config")
		}
		return args[i+1], nil
	}
	v, _ := lookupEnv("NUDGE_CONFIG")
	return v, nil
}

// readFile decodes a YAML config file over c. Unknown keys are errors.
func (c *Config) readFile(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if err := decodeStrict(data, c); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	return nil
}

// decodeStrict decodes YAML into v, refusing keys v has no field for. An
// empty document leaves v as it is.
func decodeStrict(data []byte, v any) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil && !errors.Is(err, io.EOF) {
		var te *yaml.TypeError
		if errors.As(err, &te) {
			return errors.New(strings.Join(te.Errors, "; "))
		}
		return err
	}
	return nil
}

// resolveFiles reads the secrets that live in files of their own.
func (c *Config) resolveFiles() error {
	if f := c.Redis.PasswordFile; f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("redis.password_file: %w", err)
		}
		c.Redis.Password = strings.TrimRight(string(b), "\r\n")
		c.Redis.PasswordFile = ""
	}
	if f := c.Auth.TokenFile; f != "" {
		data, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("auth.token_file: %w", err)
		}
		var tf struct {
			Tokens []TokenConfig `yaml:"tokens"`
		}
		if err := decodeStrict(data, &tf); err != nil {
			return fmt.Errorf("auth.token_file %s: %w", f, err)
		}
		c.Auth.Tokens = append(c.Auth.Tokens, tf.Tokens...)
		c.Auth.TokenFile = ""
	}
	return c.resolveWebhookSecrets()
}

// Validate reports the first setting that cannot work, naming it by its
// YAML key.
func (c Config) Validate() error {
	switch {
	case c.Decision.AuditSample < 0 || c.Decision.AuditSample > 1:
		return fmt.Errorf("decision.audit_sample: %v is not between 0 and 1", c.Decision.AuditSample)
	case c.Buckets < 0:
		return fmt.Errorf("buckets: %d is negative", c.Buckets)
	case c.Runtime.GCPercent < -1:
		return fmt.Errorf("runtime.gc_percent: %d; want a percentage, or -1 for off", c.Runtime.GCPercent)
	case c.Runtime.MemoryLimitMiB < -1:
		return fmt.Errorf("runtime.memory_limit_mib: %d; want MiB, or -1 for no limit", c.Runtime.MemoryLimitMiB)
	case c.HTTP.Console.SessionTTL < 0 || c.HTTP.Console.IdleTimeout < 0:
		return fmt.Errorf("http.console: session_ttl %v and idle_timeout %v must not be negative", c.HTTP.Console.SessionTTL, c.HTTP.Console.IdleTimeout)
	case c.Limits.MaxMessageBytes < 0:
		return fmt.Errorf("limits.max_message_bytes: %d is negative", c.Limits.MaxMessageBytes)
	case c.Limits.MaxRecvBytesInFlight < 0:
		return fmt.Errorf("limits.max_recv_bytes_in_flight: %d is negative", c.Limits.MaxRecvBytesInFlight)
	case c.Limits.MaxStreamsPerConn < 0:
		return fmt.Errorf("limits.max_streams_per_conn: %d is negative", c.Limits.MaxStreamsPerConn)
	case c.Limits.MaxConnectionIdle < 0 || c.Limits.KeepaliveTime < 0 || c.Limits.KeepaliveTimeout < 0 || c.Limits.KeepaliveMinTime < 0 || c.Limits.StreamIdle < 0:
		return errors.New("limits: max_connection_idle, keepalive_time, keepalive_timeout, keepalive_min_time and stream_idle must not be negative")
	case len(c.Redis.Cluster) > 0 && c.Redis.Addr != "":
		return errors.New("redis.cluster and redis.addr exclude each other: give the cluster's seed nodes, or one Redis")
	case c.Redis.IsCluster() && c.Redis.DB != 0:
		return errors.New("redis.db: a Redis Cluster has only database 0")
	case (c.TLS.CertFile == "") != (c.TLS.KeyFile == ""):
		return errors.New("tls: cert_file and key_file go together")
	case c.TLS.ClientCAFile != "" && c.TLS.CertFile == "":
		return errors.New("tls.client_ca_file: mutual TLS needs the server's own cert_file and key_file")
	case (c.Redis.TLS.CertFile == "") != (c.Redis.TLS.KeyFile == ""):
		return errors.New("redis.tls: cert_file and key_file go together")
	case c.Redis.WaitTimeout < 0:
		return fmt.Errorf("redis.wait_timeout: %v is negative", c.Redis.WaitTimeout)
	case c.Redis.MaxAttempts < 0:
		return fmt.Errorf("redis.max_attempts: %d is negative", c.Redis.MaxAttempts)
	case c.Redis.MaxErrorRetries < -1:
		return fmt.Errorf("redis.max_error_retries: %d; want a count, or -1 for none", c.Redis.MaxErrorRetries)
	case c.Redis.UserLocks < -1:
		return fmt.Errorf("redis.user_locks: %d; want a count, or -1 for none", c.Redis.UserLocks)
	case c.Redis.BackoffMin < 0 || c.Redis.BackoffMax < 0:
		return fmt.Errorf("redis.backoff_min, redis.backoff_max: %v, %v; want durations that are not negative", c.Redis.BackoffMin, c.Redis.BackoffMax)
	case c.Redis.MaxRedirects < 0 || c.Redis.MaxGroupUsers < 0 || c.Redis.Parallelism < 0 || c.Redis.Shards < 0:
		return errors.New("redis.max_redirects, max_group_users, parallelism, shards: none may be negative")
	case c.Decision.BreakerFailures < -1:
		return fmt.Errorf("decision.breaker_failures: %d; want a count, or -1 to never stop reads", c.Decision.BreakerFailures)
	case c.Decision.BreakerCooldown < 0:
		return fmt.Errorf("decision.breaker_cooldown: %v is negative", c.Decision.BreakerCooldown)
	}
	if err := c.Profile.validate(); err != nil {
		return err
	}
	if err := c.Rules.validate(); err != nil {
		return err
	}
	n, auto, err := c.Redis.waitReplicas()
	if err != nil {
		return err
	}
	if !auto && n > 0 && c.Redis.Addr == "" && !c.Redis.IsCluster() {
		return fmt.Errorf("redis.wait_replicas: %d, but the embedded development store has no replicas: set redis.addr or redis.cluster, or wait_replicas 0", n)
	}
	if err := c.Tracing.validate(); err != nil {
		return err
	}
	if err := c.validateWebhooks(); err != nil {
		return err
	}
	if _, err := c.Log.handlerOptions(); err != nil {
		return err
	}
	if c.Log.Format != "" && c.Log.Format != "text" && c.Log.Format != "json" {
		return fmt.Errorf("log.format: %q is neither text nor json", c.Log.Format)
	}
	if _, err := c.tokens(); err != nil {
		return err
	}
	if m := c.Metrics; m.Pprof && m.Listen != "" && !isLoopback(m.Listen) && !m.PprofNonLoopback {
		return fmt.Errorf("metrics.pprof: metrics.listen %s is not a loopback address, and profiles show the heap's contents to anyone who can reach it: "+
			"serve metrics on a loopback address to use pprof, or pass --pprof-non-loopback to accept the exposure", m.Listen)
	}
	return c.checkExposure()
}

// validate refuses negative bounds (TTL may be negative: no expiry).
func (c ProfileConfig) validate() error {
	for _, d := range []struct {
		key string
		v   time.Duration
	}{{"retention", c.Retention}, {"minute_span", c.MinuteSpan}, {"hour_span", c.HourSpan}, {"max_future", c.MaxFuture}, {"dedup_window", c.DedupWindow}, {"fired_retention", c.FiredRetention}, {"send_retention", c.SendRetention}} {
		if d.v < 0 {
			return fmt.Errorf("profile.%s: %v is negative", d.key, d.v)
		}
	}
	for _, n := range []struct {
		key string
		v   int
	}{{"dedup_max", c.DedupMax}, {"max_series", c.MaxSeries}, {"max_fired", c.MaxFired}, {"max_sends", c.MaxSends}, {"max_purchase_categories", c.MaxPurchaseCategories}, {"max_timers", c.MaxTimers}, {"max_exposures", c.MaxExposures}, {"max_conversions", c.MaxConversions}} {
		if n.v < 0 {
			return fmt.Errorf("profile.%s: %d is negative", n.key, n.v)
		}
	}
	return nil
}

// validate refuses negative limits (zero means the default).
func (c RulesConfig) validate() error {
	for _, n := range []struct {
		key string
		v   int
	}{
		{"max_bytes", c.MaxBytes}, {"max_yaml_nodes", c.MaxYAMLNodes}, {"max_triggers", c.MaxTriggers},
		{"max_offers", c.MaxOffers}, {"max_features", c.MaxFeatures}, {"max_policies", c.MaxPolicies}, {"max_expressions", c.MaxExpressions},
		{"max_expression_length", c.MaxExpressionLength}, {"max_expression_bytes", c.MaxExpressionBytes},
		{"max_event_cost", c.MaxEventCost}, {"max_decision_cost", c.MaxDecisionCost},
	} {
		if n.v < 0 {
			return fmt.Errorf("rules.%s: %d is negative", n.key, n.v)
		}
	}
	return nil
}

// WaitReplicasAuto is the default of RedisConfig.WaitReplicas: wait for
// one replica when every master has one.
const WaitReplicasAuto = "auto"

// waitReplicas parses WaitReplicas: auto (or empty), or a number of
// replicas, 0 for none.
func (c RedisConfig) waitReplicas() (n int, auto bool, err error) {
	v := strings.TrimSpace(c.WaitReplicas)
	if v == "" || strings.EqualFold(v, WaitReplicasAuto) {
		return 0, true, nil
	}
	n, err = strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, false, fmt.Errorf("redis.wait_replicas: %q is neither auto nor a number of replicas (0 turns WAIT off)", c.WaitReplicas)
	}
	return n, false, nil
}

// checkExposure refuses to serve beyond loopback without TLS or without
// tokens unless Insecure says so.
func (c Config) checkExposure() error {
	httpAddr, err := c.httpListen()
	if err != nil {
		return err
	}
	for _, l := range []struct{ key, addr string }{{"listen", c.listen()}, {"http.listen", httpAddr}} {
		if c.Insecure || l.addr == "" || isLoopback(l.addr) {
			continue
		}
		switch {
		case len(c.Auth.Tokens) == 0:
			return fmt.Errorf("%s %s is not a loopback address and no auth tokens are configured: "+
				"configure auth.tokens (or auth.token_file), or pass --insecure to serve everyone", l.key, l.addr)
		case !c.TLS.Enabled():
			return fmt.Errorf("%s %s is not a loopback address and TLS is off: tokens would travel in plaintext; "+
				"configure tls.cert_file and tls.key_file, or pass --insecure (e.g. behind a TLS-terminating proxy)", l.key, l.addr)
		}
	}
	return nil
}

// httpListen resolves HTTP.Listen to an address, "" when off.
func (c Config) httpListen() (string, error) {
	switch v := strings.TrimSpace(c.HTTP.Listen); v {
	case HTTPListenOff:
		return "", nil
	case "", HTTPListenAuto:
		host, port, err := net.SplitHostPort(c.listen())
		if err != nil {
			return "", fmt.Errorf("http.listen: auto needs listen as host:port: %w", err)
		}
		p, err := strconv.Atoi(port)
		if err != nil || p < 0 || p > 65535-10 {
			return "", fmt.Errorf("http.listen: auto takes the port of listen %s plus 10, which is no port: set http.listen to host:port or off", c.listen())
		}
		if p != 0 {
			p += 10
		}
		if !isLoopback(c.listen()) {
			host = "127.0.0.1"
		}
		return net.JoinHostPort(host, strconv.Itoa(p)), nil
	default:
		if _, _, err := net.SplitHostPort(v); err != nil {
			return "", fmt.Errorf("http.listen: %q is not host:port, auto or off: %w", c.HTTP.Listen, err)
		}
		return v, nil
	}
}

func (c Config) listen() string {
	if c.Listen == "" {
		return Defaults().Listen
	}
	return c.Listen
}

// isLoopback says whether a listen address only accepts local connections.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// tokens converts the configured tokens for the server.
func (c Config) tokens() ([]server.Token, error) {
	out := make([]server.Token, 0, len(c.Auth.Tokens))
	for _, t := range c.Auth.Tokens {
		st := server.Token{Name: t.Name, Secret: t.Secret, Groups: t.Groups, EventsPerSecond: t.EventsPerSecond,
			DecisionsPerSecond: t.DecisionsPerSecond, BurstSeconds: t.BurstSeconds}
		for _, r := range t.Roles {
			st.Roles = append(st.Roles, server.Role(r))
		}
		out = append(out, st)
	}
	if err := server.ValidateTokens(out); err != nil {
		return nil, fmt.Errorf("auth.tokens: %w", err)
	}
	return out, nil
}

// handlerOptions parses the log level.
func (l LogConfig) handlerOptions() (*slog.HandlerOptions, error) {
	var level slog.Level
	if l.Level != "" {
		if err := level.UnmarshalText([]byte(l.Level)); err != nil {
			return nil, fmt.Errorf("log.level: %w", err)
		}
	}
	return &slog.HandlerOptions{Level: level}, nil
}

// NewLogger builds the logger the configuration asks for, writing to w.
func (l LogConfig) NewLogger(w io.Writer) (*slog.Logger, error) {
	opts, err := l.handlerOptions()
	if err != nil {
		return nil, err
	}
	switch l.Format {
	case "", "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("log.format: %q is neither text nor json", l.Format)
}

const redacted = "REDACTED"

// Redacted returns the configuration as YAML with every secret replaced.
func (c Config) Redacted() ([]byte, error) {
	if c.Redis.Password != "" {
		c.Redis.Password = redacted
	}
	c.Redis.Addr = redactURL(c.Redis.Addr)
	c.Auth.Tokens = append([]TokenConfig(nil), c.Auth.Tokens...)
	for i := range c.Auth.Tokens {
		c.Auth.Tokens[i].Secret = redacted
	}
	c.Webhooks = redactWebhooks(c.Webhooks)
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(c); err != nil {
		return nil, err
	}
	return b.Bytes(), enc.Close()
}

// secretFlags are the flags whose values are secrets, or may carry one
// (a redis:// URL with a password).
var secretFlags = map[string]func(string) string{
	"redis-password": func(string) string { return redacted },
	"redis-addr":     redactURL,
	"redis-cluster":  redactURL,
}

// RedactArgs returns a command line with the values of secretFlags
// redacted, for anything that shows it (pprof's /debug/pprof/cmdline).
// Both "--flag value" and "--flag=value" forms are covered, with one dash
// or two.
func RedactArgs(args []string) []string {
	out := slices.Clone(args)
	for i := 0; i < len(out); i++ {
		name, value, hasValue := strings.Cut(strings.TrimLeft(out[i], "-"), "=")
		if !strings.HasPrefix(out[i], "-") {
			continue
		}
		redact, ok := secretFlags[name]
		switch {
		case !ok:
		case hasValue:
			out[i] = out[i][:len(out[i])-len(value)] + redact(value)
		case i+1 < len(out):
			i++
			out[i] = redact(out[i])
		}
	}
	return out
}

// redactURL hides the password of a redis:// URL.
func redactURL(addr string) string {
	scheme, rest, ok := strings.Cut(addr, "://")
	if !ok {
		return addr
	}
	userinfo, host, ok := strings.Cut(rest, "@")
	if !ok {
		return addr
	}
	if user, _, hasPass := strings.Cut(userinfo, ":"); hasPass {
		return scheme + "://" + user + ":" + redacted + "@" + host
	}
	return addr
}
