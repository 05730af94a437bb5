package integration

// The security suite: each test performs an attack of the adversarial pass
// (SECURITY.md lists them all, with their outcomes) against the built
// nudged, and asserts that it holds.

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/nudge-dm/nudge/internal/redistest"
	"github.com/nudge-dm/nudge/internal/wiretest"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// The tokens of the suite's nudged.
const (
	secIngest    = "sec-ingest-0123456789"
	secDecide    = "sec-decide-0123456789"
	secSender    = "sec-sender-0123456789"
	secSlow      = "sec-slow-0123456789ab"
	secLimited   = "sec-limited-012345678"
	secOperator  = "sec-operator-01234567"
	secAnalytics = "sec-analytics-0123456"
	secTokenYAML = "tokens:\n" +
		"- {name: ingester, secret: " + secIngest + ", roles: [ingest]}\n" +
		"- {name: storefront, secret: " + secDecide + ", roles: [decide]}\n" +
		"- {name: sms-sender, secret: " + secSender + ", roles: [decide, send, subscribe], groups: [sms-senders, acl-senders]}\n" +
		"- {name: analytics, secret: " + secAnalytics + ", roles: [subscribe], groups: [\"analytics-*\"]}\n" +
		"- {name: slow-uploader, secret: " + secSlow + ", roles: [ingest, decide]}\n" +
		"- {name: limited, secret: " + secLimited + ", roles: [decide], decisions_per_second: 2}\n" +
		"- {name: operator, secret: " + secOperator + ", roles: [admin, decide]}\n"
)

// startSecureNudged starts the built nudged on a real Redis with the
// suite's tokens, plus args.
func startSecureNudged(t *testing.T, bin, redisAddr string, args ...string) *nudged {
	t.Helper()
	tokens := filepath.Join(t.TempDir(), "tokens.yaml")
	if err := os.WriteFile(tokens, []byte(secTokenYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	return startNudged(t, bin, append([]string{"--redis-addr", redisAddr, "--auth-token-file", tokens}, args...)...)
}

func bearer(ctx context.Context, secret string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+secret)
}

// peakRSS is the process's peak resident memory (VmHWM), in bytes.
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	return int64(procStatusKiB(t, pid, "VmHWM")) << 10
}

// bystander asks for decisions with the storefront token, one after the
// other, until the function it returns is called; that returns how many
// were answered and the first error.
func bystander(ctx context.Context, conn *grpc.ClientConn) (stop func() (int, error)) {
	type result struct {
		n   int
		err error
	}
	c := nudgev1.NewDecisionServiceClient(conn)
	quit, done := make(chan struct{}), make(chan result, 1)
	go func() {
		n := 0
		for {
			select {
			case <-quit:
				done <- result{n, nil}
				return
			default:
			}
			cctx, cancel := context.WithTimeout(bearer(ctx, secDecide), 5*time.Second)
			_, err := c.GetDecision(cctx, &nudgev1.GetDecisionRequest{UserId: "bystander", Channel: "sms"})
			cancel()
			if err != nil {
				done <- result{n, err}
				return
			}
			n++
		}
	}()
	return func() (int, error) {
		close(quit)
		r := <-done
		return r.n, r.err
	}
}

// Attack 1: 32 concurrent 16.7 MB calls without a token. Before the fix
// each was read whole before the token was checked (RSS 38 MB -> 1.25 GB).
// Now they are refused from their headers: the peak RSS stays under
// 250 MB, and an authorised caller is answered throughout.
func TestAttackUnauthenticatedHugeMessages(t *testing.T) {
	bin := buildNudged(t)
	rs := redistest.Start(t)
	n := startSecureNudged(t, bin, rs.Addr)
	conn := dial(t, n.addr)
	ctx := ctxT(t)

	stopBystander := bystander(ctx, dial(t, n.addr))

	payload := make([]byte, 16_700_000)
	var wg sync.WaitGroup
	codesSeen := make([]codes.Code, 32)
	for i := range codesSeen {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var resp []byte
			err := conn.Invoke(ctx, "/nudge.v1.IngestService/Publish", &payload, &resp, grpc.ForceCodecV2(wiretest.RawCodec{}))
			codesSeen[i] = status.Code(err)
		}()
	}
	wg.Wait()
	answered, err := stopBystander()
	for i, c := range codesSeen {
		if c != codes.Unauthenticated {
			t.Errorf("call %d: %s, want Unauthenticated", i, c)
		}
	}
	if err != nil || answered == 0 {
		t.Errorf("the authorised caller during the attack: %d decisions, %v", answered, err)
	}
	if rss := peakRSS(t, n.cmd.Process.Pid); rss > 250<<20 {
		t.Errorf("peak RSS %d MiB during the attack, want under 250 MiB", rss>>20)
	} else {
		t.Logf("peak RSS %d MiB", rss>>20)
	}
}

// Attack 1b: the same with a valid token, half-sent (slow uploads): the
// requests being received are bounded (limits.max_recv_bytes_in_flight,
// half of it per token), so the token's next batch call waits for room,
// here until its deadline, and other tokens are served meanwhile.
func TestAttackSlowUploadsAreBounded(t *testing.T) {
	bin := buildNudged(t)
	rs := redistest.Start(t)
	// A bound of 64 MiB and messages of up to 16 MiB: one token holds at
	// most two batch calls being received.
	n := startSecureNudged(t, bin, rs.Addr, "--max-recv-bytes-in-flight", strconv.Itoa(64<<20), "--metrics-listen", "127.0.0.1:0")
	raw := dialH2(t, n.addr)
	start := time.Now()
	auth := []string{"authorization", "Bearer " + secSlow}
	for range 2 {
		id := raw.open("/nudge.v1.IngestService/Publish", auth...)
		raw.sendPart(id, 16<<20-100, 512<<10)
	}
	third := raw.open("/nudge.v1.IngestService/Publish", append(auth, "grpc-timeout", "5S")...)
	raw.sendPart(third, 16<<20-100, 512<<10)
	// The third waits for room, before its request is read.
	for !strings.Contains(httpGet(t, n.metrics), "nudge_rpc_recv_waiting 1") {
		if time.Since(start) > 4*time.Second {
			t.Fatalf("the third upload is not waiting for room:\n%s", httpGet(t, n.metrics))
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Others are served meanwhile, batches too.
	conn := dial(t, n.addr)
	if _, err := nudgev1.NewIngestServiceClient(conn).Publish(bearer(ctxT(t), secIngest),
		&nudgev1.PublishRequest{Events: []*nudgev1.Event{ev("bystander", "view", "phones", time.Minute)}}); err != nil {
		t.Fatalf("another token's batch during the slow uploads: %v", err)
	}
	if _, err := nudgev1.NewDecisionServiceClient(conn).GetDecision(bearer(ctxT(t), secDecide),
		&nudgev1.GetDecisionRequest{UserId: "bystander", Channel: "sms"}); err != nil {
		t.Fatalf("another token's decision during the slow uploads: %v", err)
	}
	raw.deadline(30 * time.Second)
	// Its deadline passes while it waits: grpc resets the stream.
	if code, msg := raw.status(third); code != "" && code != strconv.Itoa(int(codes.DeadlineExceeded)) {
		t.Errorf("a third slow upload of the token: grpc-status %q %q, want DeadlineExceeded or a reset", code, msg)
	}
	if rss := peakRSS(t, n.cmd.Process.Pid); rss > 250<<20 {
		t.Errorf("peak RSS %d MiB, want under 250 MiB", rss>>20)
	}
}

// Attack 3: a decide token reserved another user's cap slots and read
// their state through explain. Reserve needs send, explain needs explain
// or admin.
func TestAttackDecideTokenIsReadOnly(t *testing.T) {
	bin := buildNudged(t)
	rs := redistest.Start(t)
	n := startSecureNudged(t, bin, rs.Addr)
	dc := nudgev1.NewDecisionServiceClient(dial(t, n.addr))
	ctx := ctxT(t)
	reserve := &nudgev1.GetDecisionRequest{UserId: "victim", Channel: "sms", Reserve: true, IdempotencyKey: "k1"}
	explain := &nudgev1.GetDecisionRequest{UserId: "victim", Channel: "sms", Explain: true}
	for _, tt := range []struct {
		name   string
		secret string
		req    *nudgev1.GetDecisionRequest
		want   codes.Code
	}{
		{"decide reserves", secDecide, reserve, codes.PermissionDenied},
		{"decide explains", secDecide, explain, codes.PermissionDenied},
		{"sender reserves", secSender, reserve, codes.OK},
		{"operator explains", secOperator, explain, codes.OK},
	} {
		_, err := dc.GetDecision(bearer(ctx, tt.secret), tt.req)
		if status.Code(err) != tt.want {
			t.Errorf("%s: %v, want %s", tt.name, err, tt.want)
		}
	}
}

// Attack 4: pprof on a network address, and the Redis password on
// /debug/pprof/cmdline.
func TestAttackPprofAndSecrets(t *testing.T) {
	bin := buildNudged(t)
	out, err := exec.Command(bin, "--metrics-listen", "0.0.0.0:0", "--pprof").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--pprof-non-loopback") {
		t.Errorf("pprof on 0.0.0.0: %v\n%s", err, out)
	}

	const password = "redis-pa55word-never-shown"
	rs := redistest.Start(t, "--requirepass", password)
	n := startNudged(t, bin, "--redis-addr", rs.Addr, "--redis-password", password,
		"--metrics-listen", "127.0.0.1:0", "--pprof")
	base := strings.TrimSuffix(n.metrics, "/metrics")
	for _, page := range []string{"/debug/pprof/cmdline", "/metrics", "/debug/pprof/"} {
		if body := httpGet(t, base+page); strings.Contains(body, password) {
			t.Errorf("%s shows the Redis password", page)
		}
	}
	if body := httpGet(t, base+"/debug/pprof/cmdline"); !strings.Contains(body, "REDACTED") {
		t.Errorf("/debug/pprof/cmdline = %q, want the password REDACTED", body)
	}
}

// Attack 6: idle and abusive connections. An ingest stream left idle
// ends; a connection without calls is closed; a client pinging too often
// is disconnected; one connection may open at most max_streams_per_conn
// calls.
func TestAttackIdleAndAbusiveConnections(t *testing.T) {
	bin := buildNudged(t)
	rs := redistest.Start(t)
	n := startSecureNudged(t, bin, rs.Addr, "--stream-idle", "1s", "--max-connection-idle", "1s",
		"--keepalive-min-time", "10s", "--max-streams-per-conn", "50")

	stream, err := nudgev1.NewIngestServiceClient(dial(t, n.addr)).Stream(bearer(ctxT(t), secIngest))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "no batch on this stream for 1s") {
		t.Errorf("an idle ingest stream: %v, want Unavailable after 1s", err)
	}

	idle := dialH2(t, n.addr)
	if got := idle.settings[http2.SettingMaxConcurrentStreams]; got != 50 {
		t.Errorf("SETTINGS_MAX_CONCURRENT_STREAMS = %d, want 50", got)
	}
	idle.deadline(30 * time.Second)
	if code, _ := idle.awaitGoAway(); code != http2.ErrCodeNo {
		t.Errorf("an idle connection's GOAWAY: %v, want NO_ERROR", code)
	}

	pinger := dialH2(t, n.addr)
	pinger.deadline(30 * time.Second)
	go func() {
		for i := range 20 {
			if pinger.fr.WritePing(false, [8]byte{byte(i)}) != nil {
				return
			}
		}
	}()
	if code, debug := pinger.awaitGoAway(); code != http2.ErrCodeEnhanceYourCalm || !strings.Contains(debug, "too_many_pings") {
		t.Errorf("a client pinging 20 times at once: GOAWAY %v %q, want ENHANCE_YOUR_CALM too_many_pings", code, debug)
	}
}

// Attack 7: two purchases of value 1.7e308 made the profile's purchase
// value Infinity. value is bounded to ±1e12; the event is rejected alone.
func TestAttackHugeValues(t *testing.T) {
	bin := buildNudged(t)
	rs := redistest.Start(t)
	n := startSecureNudged(t, bin, rs.Addr)
	ctx := bearer(ctxT(t), secIngest)
	huge := ev("rich", "purchase", "phones", time.Minute)
	huge.Value = 1.7e308
	fine := ev("rich", "purchase", "phones", time.Minute)
	fine.Value = 1e12
	resp, err := nudgev1.NewIngestServiceClient(dial(t, n.addr)).Publish(ctx, &nudgev1.PublishRequest{Events: []*nudgev1.Event{huge, fine}})
	if err != nil {
		t.Fatal(err)
	}
	if r := resp.GetResults()[0]; r.GetStatus() != nudgev1.EventStatus_EVENT_STATUS_REJECTED || !strings.Contains(r.GetReason(), "value") {
		t.Errorf("a value of 1.7e308: %v %q, want REJECTED naming value", r.GetStatus(), r.GetReason())
	}
	if r := resp.GetResults()[1]; r.GetStatus() != nudgev1.EventStatus_EVENT_STATUS_APPLIED {
		t.Errorf("a value of 1e12: %v %q, want APPLIED", r.GetStatus(), r.GetReason())
	}
	p, err := nudgev1.NewProfileServiceClient(dial(t, n.addr)).GetProfile(bearer(ctxT(t), secOperator), &nudgev1.GetProfileRequest{UserId: "rich"})
	if err != nil {
		t.Fatal(err)
	}
	if v := p.GetProfile().GetPurchaseValue(); math.IsInf(v, 0) || v != 1e12 {
		t.Errorf("purchase value %v, want 1e12", v)
	}
}

// Attack 8: a token limited to 2 decisions/s got 1,010 through in 2 s (the
// burst was a whole batch of 1,000). The burst is now one second of the
// rate: the batch is refused for good, and over a run no more than the
// burst plus the rate × the time passes.
func TestAttackRateLimitBurst(t *testing.T) {
	bin := buildNudged(t)
	rs := redistest.Start(t)
	n := startSecureNudged(t, bin, rs.Addr)
	dc := nudgev1.NewDecisionServiceClient(dial(t, n.addr))
	ctx := bearer(ctxT(t), secLimited)
	start := time.Now()
	queries := make([]*nudgev1.DecisionQuery, 1000)
	for i := range queries {
		queries[i] = &nudgev1.DecisionQuery{UserId: "u" + strconv.Itoa(i), Channel: "sms"}
	}
	_, err := dc.BatchGetDecisions(ctx, &nudgev1.BatchGetDecisionsRequest{Queries: queries})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "burst of 2") {
		t.Fatalf("a batch of 1000 on a token of 2/s: %v, want InvalidArgument naming the burst", err)
	}
	passed := 0
	for time.Since(start) < 2*time.Second {
		if _, err := dc.GetDecision(ctx, &nudgev1.GetDecisionRequest{UserId: "u1", Channel: "sms"}); err == nil {
			passed++
		} else if status.Code(err) != codes.ResourceExhausted {
			t.Fatal(err)
		}
	}
	if most := 2 + int(math.Ceil(2*time.Since(start).Seconds())); passed > most || passed < 2 {
		t.Errorf("%d decisions passed in %v at 2/s, want between 2 and %d", passed, time.Since(start).Round(time.Millisecond), most)
	}
}

// Health tells the truth: with Redis gone, IngestService reports
// NOT_SERVING while the server and DecisionService stay SERVING, decisions
// answer degraded with a reason that names no internal address, and
// /readyz answers 503.
func TestAttackHealthWithRedisDown(t *testing.T) {
	bin := buildNudged(t)
	rs := redistest.Start(t)
	n := startSecureNudged(t, bin, rs.Addr, "--metrics-listen", "127.0.0.1:0")
	conn := dial(t, n.addr)
	hc := healthpb.NewHealthClient(conn)
	ctx := ctxT(t)
	check := func(svc string) healthpb.HealthCheckResponse_ServingStatus {
		r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		if err != nil {
			t.Fatal(err)
		}
		return r.GetStatus()
	}
	if s := check("nudge.v1.IngestService"); s != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("IngestService %s with Redis up", s)
	}
	rs.Stop()
	deadline := time.Now().Add(20 * time.Second)
	for check("nudge.v1.IngestService") != healthpb.HealthCheckResponse_NOT_SERVING {
		if time.Now().After(deadline) {
			t.Fatal("IngestService still SERVING 20s after Redis went away")
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, svc := range []string{"", "nudge.v1.DecisionService"} {
		if s := check(svc); s != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health %q = %s with Redis down, want SERVING (decisions degrade)", svc, s)
		}
	}
	d, err := nudgev1.NewDecisionServiceClient(conn).GetDecision(bearer(ctx, secDecide), &nudgev1.GetDecisionRequest{UserId: "u1", Channel: "sms"})
	if err != nil {
		t.Fatal(err)
	}
	if !d.GetDecision().GetDegraded() {
		t.Errorf("decision with Redis down not degraded: %v", d)
	}
	for _, r := range d.GetDecision().GetReasons() {
		if strings.Contains(r.GetMessage(), "127.0.0.1") || strings.Contains(r.GetMessage(), "tcp") {
			t.Errorf("a degraded reason names an internal address: %q", r.GetMessage())
		}
	}
	resp, err := httpGetStatus(strings.TrimSuffix(n.metrics, "/metrics") + "/readyz")
	if err != nil || resp != 503 {
		t.Errorf("/readyz with Redis down: %d %v, want 503", resp, err)
	}
}

// httpGetStatus is the status code of GET url.
func httpGetStatus(url string) (int, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

// aclRules are the rules of deploy/redis-users.acl's nudge user, with
// password as its password.
func aclRules(t *testing.T, password string) []any {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "deploy", "redis-users.acl"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "user nudge "); ok {
			var out []any
			for _, f := range strings.Fields(rest) {
				if f == ">CHANGE-ME" {
					f = ">" + password
				}
				out = append(out, f)
			}
			return out
		}
	}
	t.Fatal("deploy/redis-users.acl has no nudge user")
	return nil
}

// TestLeastPrivilegeRedisACL: nudged works as the least-privilege user of
// deploy/redis-users.acl, with wait_replicas auto on a master with a
// replica (INFO replication, then WAIT): ingest with triggers, decisions
// with a reservation, the profile service, subscribers and acks (with
// group activity), the outbox trimmer, listing and deleting groups, and
// erasure. Redis denies nothing (ACL LOG stays empty).
func TestLeastPrivilegeRedisACL(t *testing.T) {
	bin := buildNudged(t)
	master := redistest.Start(t, "--repl-diskless-sync-delay", "0")
	host, port, _ := strings.Cut(master.Addr, ":")
	redistest.Start(t, "--replicaof", host, port)
	admin := master.Client(t)
	ctx := ctxT(t)
	args := append([]any{"ACL", "SETUSER", "nudge"}, aclRules(t, "acl-test-pa55")...)
	if err := admin.Do(ctx, args...).Err(); err != nil {
		t.Fatalf("ACL SETUSER: %v", err)
	}
	for {
		info, err := admin.Info(ctx, "replication").Result()
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(info, "connected_slaves:1") && strings.Contains(info, "state=online") {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("the replica did not come online")
		}
		time.Sleep(20 * time.Millisecond)
	}

	n := startSecureNudged(t, bin, "redis://nudge:acl-test-pa55@"+master.Addr, "--trim-interval", "100ms", "--outbox-retention", "1ms")
	conn := dial(t, n.addr)
	pub, err := nudgev1.NewIngestServiceClient(conn).Publish(bearer(ctx, secIngest), &nudgev1.PublishRequest{Events: []*nudgev1.Event{
		inDaytime(ev("acl-user", "view", "phones", 3*time.Minute)), ev("acl-user", "view", "phones", 2*time.Minute), ev("acl-user", "view", "phones", time.Minute),
	}})
	if err != nil {
		t.Fatal(err)
	}
	if len(pub.GetActions()) != 1 {
		t.Fatalf("the seed scenario as the ACL user: %d actions, want 1", len(pub.GetActions()))
	}
	dc := nudgev1.NewDecisionServiceClient(conn)
	if d, err := dc.GetDecision(bearer(ctx, secSender), &nudgev1.GetDecisionRequest{UserId: "acl-user", Channel: "sms", Reserve: true, IdempotencyKey: "k1",
		// A reservation waits for the replica (WAIT): room for a slow machine.
		Budget: durationpb.New(time.Second)}); err != nil || d.GetDecision().GetDegraded() {
		t.Fatalf("reserve as the ACL user: %v %v", d, err)
	}
	if _, err := nudgev1.NewProfileServiceClient(conn).GetProfile(bearer(ctx, secOperator), &nudgev1.GetProfileRequest{UserId: "acl-user"}); err != nil {
		t.Fatal(err)
	}
	sub, err := nudgev1.NewActionServiceClient(conn).Subscribe(bearer(ctx, secSender), &nudgev1.SubscribeRequest{Group: "acl-senders"})
	if err != nil {
		t.Fatal(err)
	}
	got, err := sub.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nudgev1.NewActionServiceClient(conn).Ack(bearer(ctx, secSender), &nudgev1.AckRequest{Group: "acl-senders", AckIds: []string{got.GetAckId()}}); err != nil {
		t.Fatal(err)
	}
	// The trimmer removes the acknowledged action (retention 1ms).
	for {
		if l, err := admin.XLen(ctx, fmt.Sprintf("nudge:{%d}:out", bucketOf(got.GetAckId()))).Result(); err == nil && l == 0 {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("the trimmer did not trim the acknowledged action")
		}
		time.Sleep(20 * time.Millisecond)
	}
	adminRPC := nudgev1.NewAdminServiceClient(conn)
	if gs, err := adminRPC.ListGroups(bearer(ctx, secOperator), &nudgev1.ListGroupsRequest{}); err != nil || len(gs.GetGroups()) != 1 {
		t.Fatalf("ListGroups as the ACL user: %v, %v", gs, err)
	}
	if _, err := adminRPC.DeleteGroup(bearer(ctx, secOperator), &nudgev1.DeleteGroupRequest{Group: "acl-senders"}); err != nil {
		t.Fatalf("DeleteGroup as the ACL user: %v", err)
	}
	if _, err := nudgev1.NewProfileServiceClient(conn).DeleteProfile(bearer(ctx, secOperator), &nudgev1.DeleteProfileRequest{UserId: "acl-user"}); err != nil {
		t.Fatal(err)
	}
	denials, err := admin.Do(ctx, "ACL", "LOG").Slice()
	if err != nil {
		t.Fatal(err)
	}
	if len(denials) > 0 {
		t.Errorf("Redis denied nudged %d times: %v", len(denials), denials)
	}
	logs := n.drainLogs()
	if strings.Contains(logs, "NOPERM") {
		t.Errorf("nudged's log has a NOPERM:\n%s", logs)
	}
	if !strings.Contains(logs, "wait_replicas=1") {
		t.Errorf("wait_replicas auto did not find the replica:\n%s", logs)
	}
}

// bucketOf is the bucket of an ack id ("<bucket>/<entry id>").
func bucketOf(ackID string) int {
	b, _, _ := strings.Cut(ackID, "/")
	n, _ := strconv.Atoi(b)
	return n
}

// aliasBomb is the adversarial pass's rules file: n triggers aliasing one
// long expression (3,000: about 228 KB, which took 33.7 s and 506 MB to
// check).
func aliasBomb(n int) []byte {
	var b strings.Builder
	b.WriteString("version: 1\ntriggers:\n")
	clause := `profile.count("view", event.category, duration("30m")) >= 3`
	long := strings.TrimSuffix(strings.Repeat(clause+" && ", 40), " && ")
	for i := range n {
		when := "*e"
		if i == 0 {
			when = "&e '" + long + "'"
		}
		fmt.Fprintf(&b, "  - {id: t%d, on: [view], when: %s, action: {channel: sms, template: t}}\n", i, when)
	}
	return []byte(b.String())
}

// Attack 5: rules without bounds. The alias bomb and /dev/zero are refused
// at start with the limit named, at once; a live reload of the bomb is
// refused while decisions keep being answered, and the refusal names the
// limit.
func TestAttackRulesBombs(t *testing.T) {
	bin := buildNudged(t)
	dir := t.TempDir()
	bomb := filepath.Join(dir, "bomb.yaml")
	if err := os.WriteFile(bomb, aliasBomb(3000), 0o644); err != nil {
		t.Fatal(err)
	}
	// Under the trigger limit, the aliases still count as the text they
	// stand for.
	smaller := filepath.Join(dir, "smaller.yaml")
	if err := os.WriteFile(smaller, aliasBomb(900), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		rules, want string
	}{
		{bomb, "max_triggers"},
		{smaller, "max_expression_bytes"},
		{"/dev/zero", "max_bytes"},
	} {
		// Before the limits the bomb was accepted after 33.7 s, and
		// /dev/zero read until memory ran out: the refusal naming the
		// limit is the proof, the minute only a bound on a hang.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		out, err := exec.CommandContext(ctx, bin, "--rules", tt.rules, "--listen", "127.0.0.1:0").CombinedOutput()
		cancel()
		if err == nil || !strings.Contains(string(out), tt.want) {
			t.Errorf("--rules %s: %v, want a refusal naming %s:\n%s", tt.rules, err, tt.want, out)
		}
	}

	rules := filepath.Join(dir, "rules.yaml")
	examples, err := os.ReadFile(filepath.Join("..", "examples", "rules.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(rules, examples, 0o644); err != nil {
		t.Fatal(err)
	}
	rs := redistest.Start(t)
	n := startSecureNudged(t, bin, rs.Addr, "--rules", rules, "--rules-reload", "50ms")
	conn := dial(t, n.addr)
	ctx := ctxT(t)
	stopBystander := bystander(ctx, conn)
	if err := os.WriteFile(rules, aliasBomb(3000), 0o644); err != nil {
		t.Fatal(err)
	}
	admin := nudgev1.NewAdminServiceClient(conn)
	for {
		r, err := admin.GetRules(bearer(ctx, secOperator), &nudgev1.GetRulesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if msg := r.GetRefusal().GetError(); msg != "" {
			if !strings.Contains(msg, "max_triggers") {
				t.Errorf("the refused reload says %q, want the limit named", msg)
			}
			break
		}
		if ctx.Err() != nil {
			t.Fatal("the bomb was never refused")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if answered, err := stopBystander(); err != nil || answered == 0 {
		t.Errorf("decisions during the reload: %d, %v", answered, err)
	}
}

// Attack 2: subscribe tokens were not scoped. A token acked another
// group's pending entries (ack ids are guessable), joined any group with a
// channel filter that drops the other channels' actions, and created
// groups on every outbox; a group that never reads stopped trimming for
// good. Tokens now name their groups, an ack counts only for the member
// it was delivered to, and an idle group stops holding back trimming.
func TestAttackSubscribeScopes(t *testing.T) {
	bin := buildNudged(t)
	rs := redistest.Start(t)
	n := startSecureNudged(t, bin, rs.Addr, "--group-idle", "2s", "--outbox-retention", "1ms", "--trim-interval", "100ms",
		"--metrics-listen", "127.0.0.1:0")
	conn := dial(t, n.addr)
	ctx := ctxT(t)
	actions := nudgev1.NewActionServiceClient(conn)
	pub, err := nudgev1.NewIngestServiceClient(conn).Publish(bearer(ctx, secIngest), &nudgev1.PublishRequest{Events: []*nudgev1.Event{
		inDaytime(ev("scoped", "view", "phones", 3*time.Minute)), ev("scoped", "view", "phones", 2*time.Minute), ev("scoped", "view", "phones", time.Minute),
	}})
	if err != nil || len(pub.GetActions()) != 1 {
		t.Fatalf("seed scenario: %v, %v", pub.GetActions(), err)
	}

	// The analytics group's member a receives the action and holds it.
	sctx, cancel := context.WithCancel(bearer(ctx, secAnalytics))
	sub, err := actions.Subscribe(sctx, &nudgev1.SubscribeRequest{Group: "analytics-1", Consumer: "a"})
	if err != nil {
		t.Fatal(err)
	}
	got, err := sub.Recv()
	if err != nil {
		t.Fatal(err)
	}
	cancel() // the member goes away without acking: its delivery stays pending (released for redelivery)

	denied := func(what string, err error) {
		t.Helper()
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "may not use consumer group") {
			t.Errorf("%s: %v, want PermissionDenied naming the group", what, err)
		}
	}
	// 2a: another token acks the analytics group's entry.
	_, err = actions.Ack(bearer(ctx, secSender), &nudgev1.AckRequest{Group: "analytics-1", AckIds: []string{got.GetAckId()}})
	denied("another token acks the group's delivery", err)
	// Within the group, a member acks what was delivered to another one.
	ack, err := actions.Ack(bearer(ctx, secAnalytics), &nudgev1.AckRequest{Group: "analytics-1", Consumer: "b", AckIds: []string{got.GetAckId()}})
	if err != nil || ack.GetAcked() != 0 {
		t.Errorf("member b acks member a's delivery: acked %d, %v; want 0", ack.GetAcked(), err)
	}
	// 2b and 2c: join another token's group with a filter, create a group.
	for _, g := range []string{"analytics-1", "evil-group"} {
		s, err := actions.Subscribe(bearer(ctx, secSender), &nudgev1.SubscribeRequest{Group: g, Channels: []string{"push"}})
		if err == nil {
			_, err = s.Recv()
		}
		denied("subscribe to "+g, err)
	}
	groups, err := nudgev1.NewAdminServiceClient(conn).ListGroups(bearer(ctx, secOperator), &nudgev1.ListGroupsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range groups.GetGroups() {
		if g.GetName() == "evil-group" {
			t.Errorf("the refused subscribe created its group")
		}
	}

	// 2d: the group never reads again; after group_idle it stops holding
	// back trimming, and the outbox empties (retention 1ms).
	admin := rs.Client(t)
	stream := fmt.Sprintf("nudge:{%d}:out", bucketOf(got.GetAckId()))
	for {
		if l, err := admin.XLen(ctx, stream).Result(); err == nil && l == 0 {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("the abandoned group held back trimming")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if m := httpGet(t, n.metrics); !strings.Contains(m, `nudge_outbox_abandoned{group="analytics-1"`) {
		t.Errorf("no abandoned-group metric for analytics-1")
	}
	groups, err = nudgev1.NewAdminServiceClient(conn).ListGroups(bearer(ctx, secOperator), &nudgev1.ListGroupsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	abandoned := false
	for _, g := range groups.GetGroups() {
		abandoned = abandoned || g.GetName() == "analytics-1" && g.GetAbandoned()
	}
	if !abandoned {
		t.Errorf("ListGroups does not show analytics-1 abandoned: %v", groups.GetGroups())
	}
	if _, err := nudgev1.NewAdminServiceClient(conn).DeleteGroup(bearer(ctx, secOperator), &nudgev1.DeleteGroupRequest{Group: "analytics-1"}); err != nil {
		t.Errorf("DeleteGroup: %v", err)
	}
	if _, err := nudgev1.NewAdminServiceClient(conn).DeleteGroup(bearer(ctx, secOperator), &nudgev1.DeleteGroupRequest{Group: "analytics-1"}); status.Code(err) != codes.NotFound {
		t.Errorf("DeleteGroup of a deleted group: %v, want NotFound", err)
	}
}
