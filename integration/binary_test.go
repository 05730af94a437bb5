package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/nudge-dm/nudge/internal/daytime"
	"github.com/nudge-dm/nudge/internal/redistest"
	"github.com/nudge-dm/nudge/profile/redisstore"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// buildNudged builds cmd/nudged (once per test run, see buildCommand).
func buildNudged(t *testing.T) string { return buildCommand(t, "nudged") }

// built holds the commands built in this test run, in builtDir (made and
// removed by TestMain): linking nudged takes seconds even with the build
// cache, and some fifty tests run it.
var built = struct {
	sync.Mutex
	paths map[string]string
}{paths: map[string]string{}}

// buildCommand builds cmd/<name> the first time a test asks for it, and
// returns the same binary afterwards. Tests must not modify it.
func buildCommand(t *testing.T, name string) string {
	t.Helper()
	built.Lock()
	defer built.Unlock()
	if bin, ok := built.paths[name]; ok {
		return bin
	}
	bin := filepath.Join(builtDir, name)
	cmd := exec.Command("go", "build", "-o", bin, "github.com/nudge-dm/nudge/cmd/"+name)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", name, err, out)
	}
	built.paths[name] = bin
	return bin
}

// nudged is a running nudged process.
type nudged struct {
	cmd     *exec.Cmd
	addr    string
	http    string // the HTTP listener's host:port ("off" with --http-listen off)
	metrics string // the /metrics URL, if --metrics-listen was given
	logs    chan string
	done    chan error
}

var (
	servingRE = regexp.MustCompile(`msg="nudged serving" listen=(\S+) http=(\S+)`)
	metricsRE = regexp.MustCompile(`msg="metrics serving" addr=(\S+)`)
)

// startNudged runs the binary on a free port and waits for its "serving"
// log line.
func startNudged(t *testing.T, bin string, args ...string) *nudged {
	t.Helper()
	if !slices.Contains(args, "--rules") {
		// Not the rules bundled in the binary: the same with their users
		// in daytime, so that actions are not held by quiet hours at
		// night.
		rules := filepath.Join(t.TempDir(), "daytime-rules.yaml")
		if err := os.WriteFile(rules, daytime.Rules(time.Now()), 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--rules", rules)
	}
	// A free port for the HTTP listener unless the test says: its
	// default, the gRPC port + 10, may be taken on a busy test machine.
	cmd := exec.Command(bin, append([]string{"--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"}, args...)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	n := &nudged{cmd: cmd, logs: make(chan string, 1000), done: make(chan error, 1)}
	addr := make(chan []string, 1)
	metrics := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			if m := servingRE.FindStringSubmatch(line); m != nil {
				addr <- m[1:]
			}
			if m := metricsRE.FindStringSubmatch(line); m != nil {
				metrics <- m[1]
			}
			select {
			case n.logs <- line:
			default:
			}
		}
		close(n.logs)
		n.done <- cmd.Wait()
	}()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	select {
	case a := <-addr:
		n.addr, n.http = a[0], a[1]
	case err := <-n.done:
		t.Fatalf("nudged exited before serving: %v; logs:\n%s", err, n.drainLogs())
	case <-time.After(30 * time.Second):
		t.Fatalf("nudged did not log that it serves within 30s; logs:\n%s", n.drainLogs())
	}
	select {
	case n.metrics = <-metrics: // logged before "nudged serving"
	default:
	}
	return n
}

func (n *nudged) drainLogs() string {
	var b strings.Builder
	for {
		select {
		case l, ok := <-n.logs:
			if !ok {
				return b.String()
			}
			b.WriteString(l + "\n")
		default:
			return b.String()
		}
	}
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	if url == "" {
		t.Fatal("nudged did not log a metrics address")
	}
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
	}
	return string(body)
}

func dial(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// The built binary, against a real Redis: health SERVING, reflection lists
// the services (so grpcurl works without proto files), GetDecision
// answers, and SIGTERM stops it cleanly.
func TestNudgedBinaryServesAndStopsGracefully(t *testing.T) {
	bin := buildNudged(t)
	rs := redistest.Start(t)
	n := startNudged(t, bin, "--redis-addr", rs.Addr, "--drain-timeout", "5s", "--metrics-listen", "127.0.0.1:0")
	conn := dial(t, n.addr)
	ctx := ctxT(t)

	h, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || h.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health = %v, %v; want SERVING", h, err)
	}

	refl, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := refl.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := refl.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var services []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		services = append(services, s.Name)
	}
	for _, want := range []string{"nudge.v1.IngestService", "nudge.v1.DecisionService", "nudge.v1.ProfileService", "grpc.health.v1.Health"} {
		if !slices.Contains(services, want) {
			t.Errorf("reflection lists %v, missing %s", services, want)
		}
	}
	_ = refl.CloseSend()

	ingest := nudgev1.NewIngestServiceClient(conn)
	pub, err := ingest.Publish(ctx, &nudgev1.PublishRequest{Events: []*nudgev1.Event{
		inDaytime(ev("bin-user", "view", "phones", 3*time.Minute)), ev("bin-user", "view", "phones", 2*time.Minute), ev("bin-user", "view", "phones", time.Minute),
	}})
	if err != nil {
		t.Fatal(err)
	}
	if len(pub.Actions) != 1 {
		t.Errorf("seed scenario through the binary: %d actions, want 1", len(pub.Actions))
	}
	dec, err := nudgev1.NewDecisionServiceClient(conn).GetDecision(ctx, &nudgev1.GetDecisionRequest{UserId: "bin-user", Channel: "sms", Budget: durationpb.New(time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	if dec.Decision.Verdict != nudgev1.Verdict_VERDICT_SEND || dec.ProfileVersion == 0 {
		t.Errorf("GetDecision = %v", dec)
	}
	// /metrics shows what happened.
	scrape := httpGet(t, n.metrics)
	for _, want := range []string{
		`nudge_events_total{status="applied"} 3`,
		`nudge_actions_emitted_total 1`,
		`nudge_decisions_total{degraded="false",verdict="send"} 1`,
		`nudge_store_transactions_total 1`,
		`nudge_event_lag_seconds_count 3`,
	} {
		if !strings.Contains(scrape, want) {
			t.Errorf("/metrics lacks %q:\n%s", want, scrape)
		}
	}

	// The profile is in the real Redis, under the documented key layout.
	keys, err := rs.Client(t).Keys(ctx, "nudge:{*}:p:bin-user").Result()
	if err != nil || len(keys) != 1 {
		t.Errorf("profile keys in Redis = %v, %v; want one", keys, err)
	}

	// An open stream with a batch in flight is answered, then ended with
	// UNAVAILABLE, and the process exits 0.
	stream, err := ingest.Stream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&nudgev1.StreamRequest{Seq: 1, Events: []*nudgev1.Event{ev("bin-user", "click", "", 0)}}); err != nil {
		t.Fatal(err)
	}
	if r, err := stream.Recv(); err != nil || r.Seq != 1 {
		t.Fatalf("stream answer = %v, %v", r, err)
	}
	if err := n.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err == nil || errors.Is(err, io.EOF) {
		t.Errorf("stream after SIGTERM: %v, want UNAVAILABLE", err)
	}
	select {
	case err := <-n.done:
		if err != nil {
			t.Errorf("nudged exited with %v; logs:\n%s", err, n.drainLogs())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("nudged did not exit within 30s of SIGTERM")
	}
}

// Without --redis-addr the binary starts the embedded store and says loudly
// that it is not durable; a missing Redis fails fast with a clear error.
func TestNudgedBinaryEmbeddedStoreAndBadRedis(t *testing.T) {
	bin := buildNudged(t)
	n := startNudged(t, bin)
	conn := dial(t, n.addr)
	dec, err := nudgev1.NewDecisionServiceClient(conn).GetDecision(ctxT(t), &nudgev1.GetDecisionRequest{UserId: "nobody", Channel: "web", Budget: durationpb.New(time.Second)}) // the first call may be slow on a busy box
	if err != nil || dec.Decision.Verdict != nudgev1.Verdict_VERDICT_SEND || dec.Decision.Offer.GetId() != "web-welcome" {
		t.Errorf("GetDecision on the embedded store = %v, %v; want the web-welcome offer", dec, err)
	}
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	<-n.done
	logs := n.drainLogs()
	if !strings.Contains(logs, "NOT DURABLE") {
		t.Errorf("embedded store started without the durability warning; logs:\n%s", logs)
	}

	// A port nobody listens on.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--listen", "127.0.0.1:0", "--redis-addr", dead).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "cannot reach Redis at "+dead) {
		t.Errorf("nudged with an unreachable Redis: err %v, output:\n%s", err, out)
	}

	// A rules file that does not compile stops the start with its line.
	bad := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(bad, []byte("version: 1\ntriggers:\n  - id: x\n    on: [view]\n    when: evnt.type == 'view'\n    action: {channel: sms, template: t}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = exec.CommandContext(ctx, bin, "--listen", "127.0.0.1:0", "--rules", bad).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "rules.yaml:5") {
		t.Errorf("nudged with a broken rules file: err %v, output:\n%s", err, out)
	}
}

// Rules reload on SIGHUP: a good file is put in force, a file with a CEL
// type error is refused with the rule named, and the server keeps serving
// with the previous rules.
func TestNudgedBinaryReloadsRulesOnSIGHUP(t *testing.T) {
	bin := buildNudged(t)
	rules := filepath.Join(t.TempDir(), "rules.yaml")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(rules, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("version: 1\noffers:\n  - id: first\n    template: t1\n")
	n := startNudged(t, bin, "--rules", rules, "--rules-reload", "-1s")
	admin := nudgev1.NewAdminServiceClient(dial(t, n.addr))
	decide := nudgev1.NewDecisionServiceClient(dial(t, n.addr))
	rulesNow := func() *nudgev1.GetRulesResponse {
		t.Helper()
		r, err := admin.GetRules(ctxT(t), &nudgev1.GetRulesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	offerNow := func() string {
		t.Helper()
		// A generous budget: a cold first call on a busy test machine
		// must not degrade to the fallback; budgets have their own tests.
		d, err := decide.GetDecision(ctxT(t), &nudgev1.GetDecisionRequest{UserId: "u", Channel: "web", Budget: durationpb.New(time.Second)})
		if err != nil {
			t.Fatal(err)
		}
		if d.GetDecision().GetDegraded() {
			t.Fatalf("decision degraded: %v", d)
		}
		return d.GetDecision().GetOffer().GetId()
	}
	v1 := rulesNow()
	if v1.GetSource() != rules || v1.GetOffers() != 1 || offerNow() != "first" {
		t.Fatalf("initial rules: %v, offer %q", v1, offerNow())
	}
	// hup sends SIGHUP and waits for nudged to log the outcome.
	hup := func(want string) string {
		t.Helper()
		if err := n.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		deadline := time.After(30 * time.Second)
		for {
			select {
			case l := <-n.logs:
				if strings.Contains(l, want) {
					return l
				}
			case <-deadline:
				t.Fatalf("no log line with %q after SIGHUP", want)
			}
		}
	}

	write("version: 1\noffers:\n  - id: second\n    template: t2\n")
	hup("rules reloaded")
	if v2 := rulesNow(); v2.GetVersion() == v1.GetVersion() || offerNow() != "second" {
		t.Errorf("after reload: %v, offer %q; want the new rules", v2, offerNow())
	}
	good := rulesNow().GetVersion()

	write("version: 1\noffers:\n  - id: typo\n    when: profile.count(\"view\", 3) >= 1\n    template: t\n")
	line := hup("rules reload refused")
	if !strings.Contains(line, `offer \"typo\"`) && !strings.Contains(line, "typo") {
		t.Errorf("refusal does not name the rule: %s", line)
	}
	if rulesNow().GetVersion() != good || offerNow() != "second" {
		t.Errorf("a broken file replaced the rules in force")
	}
}

// Decisions are logged to the audit stream (sampled; here all of them),
// nudgectl decisions tail reads them through AdminService, and
// DeleteProfile erases a user's.
func TestDecisionAuditTrail(t *testing.T) {
	nudgedBin, ctl := buildNudged(t), buildCommand(t, "nudgectl")
	rs := redistest.Start(t)
	n := startNudged(t, nudgedBin, "--redis-addr", rs.Addr, "--audit-sample", "1")
	tailDecisions(t, ctl, n.addr)

	if _, err := nudgev1.NewProfileServiceClient(dial(t, n.addr)).DeleteProfile(ctxT(t), &nudgev1.DeleteProfileRequest{UserId: "audited"}); err != nil {
		t.Fatal(err)
	}
	left, err := rs.Client(t).XRange(ctxT(t), "nudge:audit", "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range left {
		if m.Values["user_id"] == "audited" {
			t.Errorf("audit entry %v survived DeleteProfile", m.Values)
		}
	}
	if len(left) != 1 {
		t.Errorf("%d audit entries left, want the other user's 1", len(left))
	}
}

// nudgectl against a running nudged: decide, profile get and delete,
// actions tail (consuming with --ack) and actions dead.
func TestNudgectlAgainstNudged(t *testing.T) {
	nudgedBin, ctl := buildNudged(t), buildCommand(t, "nudgectl")
	rs := redistest.Start(t)
	n := startNudged(t, nudgedBin, "--redis-addr", rs.Addr)
	ingest := nudgev1.NewIngestServiceClient(dial(t, n.addr))
	if _, err := ingest.Publish(ctxT(t), &nudgev1.PublishRequest{Events: []*nudgev1.Event{
		inDaytime(ev("cli-user", "view", "phones", 3*time.Minute)), ev("cli-user", "view", "phones", 2*time.Minute), ev("cli-user", "view", "phones", time.Minute),
	}}); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, ctl, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("nudgectl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	// A 1s budget: the answer must come from the profile, even on a busy
	// machine where the first read of a fresh nudged waits for a connection.
	if out := run("decide", "cli-user", "--channel", "sms", "--addr", n.addr, "--json", "--budget", "1s"); !strings.Contains(out, `"verdict":"VERDICT_SEND"`) || !strings.Contains(out, `"id":"phones-coupon"`) {
		t.Errorf("decide: %s", out)
	}
	if out := run("profile", "get", "cli-user", "--addr", n.addr, "--json"); !strings.Contains(out, `"view":"3"`) {
		t.Errorf("profile get: %s", out)
	}
	if out := run("actions", "tail", "--group", "cli", "--ack", "-n", "1", "--addr", n.addr); !strings.Contains(out, "user=cli-user category-interest-coupon via sms") || !strings.Contains(out, "delivery=1") {
		t.Errorf("actions tail: %s", out)
	}
	if out := run("actions", "dead", "--addr", n.addr); !strings.Contains(out, "no dead letters") {
		t.Errorf("actions dead: %s", out)
	}
	if out := run("profile", "delete", "cli-user", "--addr", n.addr, "--json"); !strings.Contains(out, `"deleted":true`) {
		t.Errorf("profile delete: %s", out)
	}
}

// nudgectl send replays a 100k-line file through the Publisher: progress,
// an exact summary, a malformed line reported with its line number; and
// re-feeding the same file counts nothing twice.
func TestNudgectlSend(t *testing.T) {
	nudgedBin, ctl := buildNudged(t), buildCommand(t, "nudgectl")
	rs := redistest.Start(t)
	n := startNudged(t, nudgedBin, "--redis-addr", rs.Addr)
	const events, badLine = 100000, 5000
	path := filepath.Join(t.TempDir(), "day.jsonl")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Now().Add(-10 * time.Minute).UTC().Format(time.RFC3339)
	w := bufio.NewWriter(f)
	for i := range events {
		if i == badLine-1 {
			fmt.Fprintln(w, `{"event_id": "broken", "user_id": `) // line 5000
		}
		fmt.Fprintf(w, `{"event_id":"d-%d","user_id":"send-%d","type":"view","category":"c%d","occurred_at":"%s"}`+"\n", i, i%1000, i%7, at)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	f.Close()

	send := func(args ...string) (string, string, error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, ctl, append([]string{"send", path, "--addr", n.addr, "--json"}, args...)...)
		var out, errOut strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errOut
		err := cmd.Run()
		return out.String(), errOut.String(), err
	}
	type summary struct {
		Lines, Malformed                      int
		Published, Applied, Duplicate, Failed uint64
	}
	parse := func(out string) summary {
		t.Helper()
		var s summary
		if err := json.Unmarshal([]byte(out), &s); err != nil {
			t.Fatalf("summary %q: %v", out, err)
		}
		return s
	}

	// The malformed line makes the exit status 1 without --allow-rejects.
	out, errOut, err := send()
	if err == nil {
		t.Errorf("send with a malformed line exited 0")
	}
	if !strings.Contains(errOut, fmt.Sprintf("day.jsonl:%d: malformed event", badLine)) {
		t.Errorf("the malformed line is not reported with its number:\n%s", errOut)
	}
	if !strings.Contains(errOut, "events/s") {
		t.Errorf("no progress line on stderr:\n%s", errOut)
	}
	if s := parse(out); s.Lines != events+1 || s.Malformed != 1 || s.Published != events || s.Applied != events || s.Failed != 0 {
		t.Errorf("first send: %+v", s)
	}
	// Re-feeding the file (the seed's batch fallback) counts nothing twice.
	out, _, err = send("--allow-rejects")
	if err != nil {
		t.Errorf("re-send with --allow-rejects: %v", err)
	}
	if s := parse(out); s.Applied != 0 || s.Duplicate != events {
		t.Errorf("re-send: %+v, want every event a duplicate", s)
	}
	// The profiles hold exactly 100k views.
	store := redisstore.New(rs.Client(t), redisstore.Options{})
	var total uint64
	for u := range 1000 {
		p, err := store.Get(ctxT(t), fmt.Sprintf("send-%d", u))
		if err != nil {
			t.Fatal(err)
		}
		total += p.Total("view")
	}
	if total != events {
		t.Errorf("profiles count %d views, want %d", total, events)
	}
}

// Every binary says what it is with --version: its name, the module
// version, the VCS revision (or that it was built without one) and Go's.
func TestBinariesPrintVersion(t *testing.T) {
	for _, name := range []string{"nudged", "nudgectl", "nudge-bench", "nudge-demo"} {
		out, err := exec.Command(buildCommand(t, name), "--version").CombinedOutput()
		if err != nil {
			t.Errorf("%s --version: %v\n%s", name, err, out)
			continue
		}
		if s := string(out); !strings.HasPrefix(s, name+" ") || !strings.Contains(s, "revision") || !strings.Contains(s, "go1.") {
			t.Errorf("%s --version printed %q", name, s)
		}
	}
}

// tailDecisions makes two decisions on the nudged at addr, which samples
// every decision, and checks that nudgectl decisions tail prints both.
func tailDecisions(t *testing.T, ctl, addr string) {
	t.Helper()
	decide := nudgev1.NewDecisionServiceClient(dial(t, addr))
	var ids []string
	for _, user := range []string{"audited", "other"} {
		d, err := decide.GetDecision(ctxT(t), &nudgev1.GetDecisionRequest{UserId: user, Channel: "web", Budget: durationpb.New(time.Second)})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, d.GetDecision().GetDecisionId())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, ctl, "decisions", "tail", "--addr", addr, "--all", "-n", "2").CombinedOutput()
	if err != nil {
		t.Fatalf("nudgectl decisions tail: %v\n%s", err, out)
	}
	for i, user := range []string{"audited", "other"} {
		if !strings.Contains(string(out), ids[i]+" user="+user+" channel=web SEND offer=web-welcome") {
			t.Errorf("tail output lacks decision %s of %s:\n%s", ids[i], user, out)
		}
	}
}

// decisions tail and actions dead go through nudged, so they work against
// its embedded store, which no other process can reach.
func TestNudgectlLogsAgainstEmbeddedStore(t *testing.T) {
	nudgedBin, ctl := buildNudged(t), buildCommand(t, "nudgectl")
	n := startNudged(t, nudgedBin, "--audit-sample", "1")
	tailDecisions(t, ctl, n.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, ctl, "actions", "dead", "--addr", n.addr).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "no dead letters") {
		t.Errorf("nudgectl actions dead: %v\n%s", err, out)
	}
}
