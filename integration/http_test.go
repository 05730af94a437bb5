package integration

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/nudge-dm/nudge/internal/redistest"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// curlResult is what curl printed: the HTTP status and the JSON body.
type curlResult struct {
	status int
	body   map[string]any
	raw    string
}

// curlJSON POSTs body as JSON to url with curl, as the README's examples
// do, with an Authorization: Bearer header when token is not empty, plus
// extra curl arguments.
func curlJSON(t *testing.T, url, token, body string, extra ...string) curlResult {
	t.Helper()
	args := []string{"-sS", "--max-time", "20", "-w", "\n%{http_code}", "-H", "Content-Type: application/json", "-d", body}
	if token != "" {
		args = append(args, "-H", "Authorization: Bearer "+token)
	}
	args = append(append(args, extra...), url)
	return runCurl(t, args...)
}

func runCurl(t *testing.T, args ...string) curlResult {
	t.Helper()
	out, err := exec.Command("curl", args...).Output()
	if err != nil {
		t.Fatalf("curl %s: %v", strings.Join(args, " "), err)
	}
	s := strings.TrimRight(string(out), "\n")
	i := strings.LastIndexByte(s, '\n')
	status, err := strconv.Atoi(s[i+1:])
	if err != nil {
		t.Fatalf("curl printed no status: %q", s)
	}
	r := curlResult{status: status, raw: s[:max(i, 0)]}
	if strings.HasPrefix(strings.TrimSpace(r.raw), "{") {
		if err := json.Unmarshal([]byte(r.raw), &r.body); err != nil {
			t.Fatalf("curl %s: body is not JSON: %v\n%s", args[len(args)-1], err, r.raw)
		}
	}
	return r
}

// want fails the test unless the call answered status and, for an error,
// the Connect error code.
func (r curlResult) want(t *testing.T, what string, status int, code string) {
	t.Helper()
	if r.status != status || (code != "" && r.body["code"] != code) {
		t.Fatalf("%s: HTTP %d %s, want %d %s", what, r.status, r.raw, status, code)
	}
}

// field walks a decoded JSON object: field(m, "decision", "verdict").
func field(m map[string]any, path ...string) any {
	var v any = m
	for _, p := range path {
		o, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = o[p]
	}
	return v
}

// The README's curl examples against a built nudged with tokens on a real
// Redis: every unary RPC answers JSON on the HTTP listener, through the
// same tokens, roles, validation and handlers as the gRPC port (the rules
// version and the profile agree with the gRPC answers), errors come with
// the HTTP status of their code, the probes answer without a token, and
// the calls count in the same rpc.server metrics.
func TestHTTPJSONAgainstNudged(t *testing.T) {
	rs := redistest.Start(t)
	n := startSecureNudged(t, buildNudged(t), rs.Addr, "--metrics-listen", "127.0.0.1:0")
	base := "http://" + n.http
	user := fmt.Sprintf("http-shopper-%d", time.Now().UnixNano())

	// Three views of phones in the last minutes: the third fires the coupon.
	var events []string
	for i, ago := range []time.Duration{3 * time.Minute, 2 * time.Minute, time.Minute} {
		events = append(events, fmt.Sprintf(`{"event_id":"h%d","user_id":%q,"type":"view","category":"phones","occurred_at":%q}`,
			i, user, time.Now().Add(-ago).UTC().Format(time.RFC3339)))
	}
	publish := `{"events":[` + strings.Join(events, ",") + `]}`
	publishURL := base + "/nudge.v1.IngestService/Publish"

	curlJSON(t, publishURL, "", publish).want(t, "Publish without a token", http.StatusUnauthorized, "unauthenticated")
	curlJSON(t, publishURL, "not-a-token-0123456789", publish).want(t, "Publish with an unknown token", http.StatusUnauthorized, "unauthenticated")
	denied := curlJSON(t, publishURL, secDecide, publish)
	denied.want(t, "Publish with a decide-only token", http.StatusForbidden, "permission_denied")
	if msg, _ := denied.body["message"].(string); !strings.Contains(msg, "storefront") || !strings.Contains(msg, "ingest") {
		t.Errorf("permission denied message %q names neither the token nor the role", msg)
	}

	pub := curlJSON(t, publishURL, secIngest, publish)
	pub.want(t, "Publish", http.StatusOK, "")
	results, _ := pub.body["results"].([]any)
	if len(results) != 3 {
		t.Fatalf("Publish: %d results, want 3: %s", len(results), pub.raw)
	}
	for _, r := range results {
		if s := field(r.(map[string]any), "status"); s != "EVENT_STATUS_APPLIED" {
			t.Errorf("Publish: an event is %v, want APPLIED: %s", s, pub.raw)
		}
	}
	if actions, _ := pub.body["actions"].([]any); len(actions) != 1 || field(actions[0].(map[string]any), "triggerId") != "category-interest-coupon" {
		t.Errorf("Publish: actions %v, want the coupon", pub.body["actions"])
	}
	again := curlJSON(t, publishURL, secIngest, publish)
	again.want(t, "Publish again", http.StatusOK, "")
	if s := field(again.body["results"].([]any)[0].(map[string]any), "status"); s != "EVENT_STATUS_DUPLICATE" {
		t.Errorf("re-sent event is %v, want DUPLICATE", s)
	}

	decideURL := base + "/nudge.v1.DecisionService/GetDecision"
	dec := curlJSON(t, decideURL, secDecide, fmt.Sprintf(`{"user_id":%q,"channel":"sms","budget":"1s"}`, user))
	dec.want(t, "GetDecision", http.StatusOK, "")
	if v := field(dec.body, "decision", "verdict"); v != "VERDICT_SEND" || field(dec.body, "profileVersion") != "1" || field(dec.body, "decision", "degraded") != false {
		t.Errorf("GetDecision: %s, want a SEND on profile version 1, not degraded", dec.raw)
	}
	curlJSON(t, decideURL, secDecide, fmt.Sprintf(`{"user_id":%q}`, user)).want(t, "GetDecision without a channel", http.StatusBadRequest, "invalid_argument")
	typo := curlJSON(t, decideURL, secDecide, fmt.Sprintf(`{"user_id":%q,"chanel":"sms"}`, user))
	typo.want(t, "GetDecision with a misspelt field", http.StatusBadRequest, "invalid_argument")
	if !strings.Contains(typo.raw, `chanel`) {
		t.Errorf("the error does not name the unknown field: %s", typo.raw)
	}
	curlJSON(t, decideURL, secDecide, `{"user_id":`).want(t, "GetDecision with broken JSON", http.StatusBadRequest, "invalid_argument")

	profileURL := base + "/nudge.v1.ProfileService/GetProfile"
	curlJSON(t, profileURL, secDecide, fmt.Sprintf(`{"user_id":%q}`, user)).want(t, "GetProfile with a decide-only token", http.StatusForbidden, "permission_denied")
	curlJSON(t, profileURL, secOperator, `{"user_id":"nobody-at-all"}`).want(t, "GetProfile of an unknown user", http.StatusNotFound, "not_found")
	prof := curlJSON(t, profileURL, secOperator, fmt.Sprintf(`{"user_id":%q}`, user))
	prof.want(t, "GetProfile", http.StatusOK, "")

	rulesURL := base + "/nudge.v1.AdminService/GetRules"
	curlJSON(t, rulesURL, "", `{}`).want(t, "GetRules without a token", http.StatusUnauthorized, "unauthenticated")
	rules := curlJSON(t, rulesURL, secOperator, `{}`)
	rules.want(t, "GetRules", http.StatusOK, "")

	// The same answers as the gRPC port's.
	conn, err := grpc.NewClient(n.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := metadata.AppendToOutgoingContext(ctxT(t), "authorization", "Bearer "+secOperator)
	gr, err := nudgev1.NewAdminServiceClient(conn).GetRules(ctx, &nudgev1.GetRulesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if rules.body["version"] != gr.GetVersion() || gr.GetVersion() == "" {
		t.Errorf("GetRules over HTTP: version %v, over gRPC %q", rules.body["version"], gr.GetVersion())
	}
	gp, err := nudgev1.NewProfileServiceClient(conn).GetProfile(ctx, &nudgev1.GetProfileRequest{UserId: user})
	if err != nil {
		t.Fatal(err)
	}
	if v := field(prof.body, "profile", "version"); v != strconv.FormatUint(gp.GetProfile().GetVersion(), 10) {
		t.Errorf("GetProfile over HTTP: version %v, over gRPC %d: %s", v, gp.GetProfile().GetVersion(), prof.raw)
	}

	// gRPC-Web on the same listener: a framed protobuf request, the
	// status in the trailer frame.
	if got := grpcWebGetRules(t, base, secOperator); got != gr.GetVersion() {
		t.Errorf("GetRules over gRPC-Web: version %q, want %q", got, gr.GetVersion())
	}

	// A call without a token is refused from its headers: the server
	// answers 401 while the body is still coming (it never ends here), as
	// the gRPC port refuses before reading.
	unread := unauthenticatedWhileSending(t, publishURL)
	if unread != http.StatusUnauthorized {
		t.Errorf("a call without a token whose body never ends: HTTP %d, want 401 before the body", unread)
	}

	// The probes need no token.
	for _, p := range []string{"/healthz", "/readyz"} {
		if r := runCurl(t, "-sS", "-w", "\n%{http_code}", base+p); r.status != http.StatusOK {
			t.Errorf("GET %s: %d %s", p, r.status, r.raw)
		}
	}
	// A method with the wrong content type, and no method at all.
	runCurl(t, "-sS", "-w", "\n%{http_code}", "-H", "Content-Type: text/plain", "-H", "Authorization: Bearer "+secOperator, "-d", "{}", rulesURL).
		want(t, "GetRules as text/plain", http.StatusUnsupportedMediaType, "unimplemented")
	curlJSON(t, base+"/nudge.v1.AdminService/NoSuchMethod", secOperator, `{}`).want(t, "an unknown method", http.StatusNotFound, "not_found")

	// The calls made over HTTP count in the gRPC server's metrics.
	samples := parseScrape(t, httpGet(t, n.metrics))
	if got, _ := sum(samples, "rpc_server_call_duration_seconds_count", `rpc_method="nudge.v1.AdminService/GetRules"`, `rpc_response_status_code="OK"`); got < 3 {
		t.Errorf("rpc_server_call_duration_seconds_count for GetRules OK = %v, want at least 3 (HTTP, gRPC-Web, gRPC)", got)
	}
	// Refused from their headers, as on the gRPC port: 4 without a token
	// or with an unknown one, 2 without the role.
	if got, _ := sum(samples, "nudge_rpc_refused_unread_total", `code="Unauthenticated"`); got < 4 {
		t.Errorf("nudge_rpc_refused_unread_total{code=Unauthenticated} = %v, want at least 4", got)
	}
	if got, _ := sum(samples, "nudge_rpc_refused_unread_total", `code="PermissionDenied"`); got < 2 {
		t.Errorf("nudge_rpc_refused_unread_total{code=PermissionDenied} = %v, want at least 2", got)
	}

	// /readyz follows the store: 503 once Redis is gone.
	rs.Stop()
	deadline := time.Now().Add(30 * time.Second)
	for {
		r := runCurl(t, "-sS", "-w", "\n%{http_code}", base+"/readyz")
		if r.status == http.StatusServiceUnavailable {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz still answers %d %q 30s after Redis stopped", r.status, r.raw)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if r := runCurl(t, "-sS", "-w", "\n%{http_code}", base+"/healthz"); r.status != http.StatusOK {
		t.Errorf("/healthz with Redis down: %d, want 200 (the process serves)", r.status)
	}
}

// unauthenticatedWhileSending POSTs to url without a token a JSON body
// that starts and then stalls, and returns the HTTP status the server
// answered meanwhile; the test fails if none comes within 20 s.
func unauthenticatedWhileSending(t *testing.T, url string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	body := &stalledBody{head: []byte(`{"events":[`), stall: ctx.Done()}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	// A length, as a large upload has (a chunked body is drained by Go's
	// server, up to 256 KiB, before it answers).
	req.ContentLength = 8 << 20
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("no answer while the body was being sent: %v", err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// stalledBody reads head, then blocks until stall is closed.
type stalledBody struct {
	head  []byte
	stall <-chan struct{}
}

func (b *stalledBody) Read(p []byte) (int, error) {
	if len(b.head) > 0 {
		n := copy(p, b.head)
		b.head = b.head[n:]
		return n, nil
	}
	<-b.stall
	return 0, io.ErrUnexpectedEOF
}

// grpcWebGetRules calls AdminService/GetRules with the gRPC-Web protocol
// and returns the rules version; it fails the test unless grpc-status is 0.
func grpcWebGetRules(t *testing.T, base, token string) string {
	t.Helper()
	msg, err := proto.Marshal(&nudgev1.GetRulesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	frame := append([]byte{0, 0, 0, 0, 0}, msg...)
	binary.BigEndian.PutUint32(frame[1:5], uint32(len(msg)))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/nudge.v1.AdminService/GetRules", bytes.NewReader(frame))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/grpc-web+proto")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var out nudgev1.GetRulesResponse
	trailers := ""
	for len(body) >= 5 {
		flag, size := body[0], binary.BigEndian.Uint32(body[1:5])
		if int(size) > len(body)-5 {
			t.Fatalf("gRPC-Web: truncated frame")
		}
		payload := body[5 : 5+size]
		body = body[5+size:]
		if flag&0x80 != 0 {
			trailers = string(payload)
			continue
		}
		if err := proto.Unmarshal(payload, &out); err != nil {
			t.Fatalf("gRPC-Web: %v", err)
		}
	}
	if resp.StatusCode != http.StatusOK || !strings.Contains(strings.ToLower(trailers), "grpc-status: 0") {
		t.Fatalf("gRPC-Web GetRules: HTTP %d, trailers %q", resp.StatusCode, trailers)
	}
	return out.GetVersion()
}

// Over TLS the HTTP listener uses the gRPC port's certificate, with
// HTTP/1.1 and HTTP/2; a token still travels only over TLS.
func TestHTTPJSONOverTLS(t *testing.T) {
	rs := redistest.Start(t)
	pki := writeSecureCLIPKI(t)
	n := startSecureNudged(t, buildNudged(t), rs.Addr, "--tls-cert-file", pki.serverCert, "--tls-key-file", pki.serverKey)
	url := "https://" + n.http + "/nudge.v1.AdminService/GetRules"
	for _, proto := range []string{"--http1.1", "--http2"} {
		r := curlJSON(t, url, secOperator, `{}`, "--cacert", pki.ca, proto)
		r.want(t, "GetRules over TLS "+proto, http.StatusOK, "")
		if v, _ := r.body["version"].(string); v == "" {
			t.Errorf("GetRules over TLS %s: no version: %s", proto, r.raw)
		}
	}
	// Plaintext to the TLS listener is refused, not answered.
	r := runCurl(t, "-sS", "-w", "\n%{http_code}", "-H", "Content-Type: application/json", "-d", "{}", "http://"+n.http+"/nudge.v1.AdminService/GetRules")
	if r.status == http.StatusOK {
		t.Errorf("a plaintext call to the TLS listener answered 200: %s", r.raw)
	}
}

// readmeBlock returns the first ```sh block of the README after the line
// that contains marker.
func readmeBlock(t *testing.T, marker string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(b), marker)
	if !ok {
		t.Fatalf("README.md has no %q", marker)
	}
	_, code, ok := strings.Cut(after, "```sh\n")
	if !ok {
		t.Fatalf("README.md has no sh block after %q", marker)
	}
	code, _, _ = strings.Cut(code, "```")
	return code
}

// runReadmeBlock runs a README block with bash against the HTTP listener
// at addr (instead of the default 127.0.0.1:7080) and returns the JSON
// answers it printed, in order.
func runReadmeBlock(t *testing.T, code, addr string, env ...string) []map[string]any {
	t.Helper()
	code = strings.ReplaceAll(code, "127.0.0.1:7080", addr)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-euo", "pipefail", "-c", code)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("README block: %v\n%s", err, out)
	}
	var answers []map[string]any
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var m map[string]any
		if err := dec.Decode(&m); err == io.EOF {
			return answers
		} else if err != nil {
			t.Fatalf("README block printed something that is not JSON (%v):\n%s", err, out)
		}
		answers = append(answers, m)
	}
}

// The README's HTTP examples, run as they are written (only the address
// changes), work on any date: the quick start's Publish and GetDecision
// against a nudged without tokens, and every unary RPC of the HTTP/JSON
// section against one with tokens. No answer is an error of the caller's
// making beyond the placeholders' (an unknown group, an unknown ack id).
func TestReadmeHTTPExamples(t *testing.T) {
	bin := buildNudged(t)
	rs := redistest.Start(t)

	open := startNudged(t, bin, "--redis-addr", rs.Addr)
	quick := runReadmeBlock(t, readmeBlock(t, "Then, from any language that speaks HTTP"), open.http)
	if len(quick) != 2 {
		t.Fatalf("quick start: %d answers, want 2: %v", len(quick), quick)
	}
	if s := field(quick[0]["results"].([]any)[0].(map[string]any), "status"); s != "EVENT_STATUS_APPLIED" {
		t.Errorf("quick start Publish: %v", quick[0])
	}
	if v := field(quick[1], "decision", "verdict"); v == nil || field(quick[1], "decision", "degraded") != false {
		t.Errorf("quick start GetDecision: %v", quick[1])
	}

	tokens := filepath.Join(t.TempDir(), "tokens.yaml")
	const token = "readme-operator-0123456789"
	if err := os.WriteFile(tokens, []byte("tokens:\n- {name: readme, secret: "+token+", roles: [ingest, decide, admin, subscribe], groups: [sms-sender]}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A Redis of its own: the quick start's user and event ids are the same.
	secured := startNudged(t, bin, "--redis-addr", redistest.Start(t).Addr, "--auth-token-file", tokens)
	block := readmeBlock(t, "Every unary RPC, with the token")
	answers := runReadmeBlock(t, block, secured.http, "TOKEN="+token)
	if want := strings.Count(block, "curl "); len(answers) != want {
		t.Fatalf("%d answers for %d curl commands", len(answers), want)
	}
	for i, a := range answers {
		code, _ := a["code"].(string)
		switch code {
		case "":
		case "not_found", "invalid_argument": // DeleteGroup of no group; Ack of a placeholder id
			t.Logf("answer %d: %s (a placeholder's)", i, a["message"])
		default:
			t.Errorf("answer %d is an error: %v", i, a)
		}
	}
	if s := field(answers[0]["results"].([]any)[0].(map[string]any), "status"); s != "EVENT_STATUS_APPLIED" {
		t.Errorf("Publish: %v", answers[0])
	}
}

// connectFrame is one enveloped message of a Connect stream.
type connectFrame struct {
	end  bool // the end-of-stream message: {"error": ...} or {}
	json map[string]any
}

// connectStream calls a server-streaming method with the Connect
// streaming protocol in JSON over HTTP/1.1 and returns its frames as they
// come, until the stream ends, ctx ends, or more returns false.
func connectStream(ctx context.Context, t *testing.T, url, token, body string, more func(connectFrame) bool) []connectFrame {
	t.Helper()
	env := append([]byte{0, 0, 0, 0, 0}, body...)
	binary.BigEndian.PutUint32(env[1:5], uint32(len(body)))
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(env))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/connect+json")
	req.Header.Set("Connect-Protocol-Version", "1")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("POST %s: HTTP %d %s", url, resp.StatusCode, b)
	}
	var frames []connectFrame
	head := make([]byte, 5)
	for {
		if _, err := io.ReadFull(resp.Body, head); err != nil {
			if ctx.Err() == nil && err != io.EOF {
				t.Fatalf("reading the stream: %v", err)
			}
			return frames
		}
		payload := make([]byte, binary.BigEndian.Uint32(head[1:5]))
		if _, err := io.ReadFull(resp.Body, payload); err != nil {
			t.Fatalf("reading the stream: %v", err)
		}
		f := connectFrame{end: head[0]&0x02 != 0}
		if err := json.Unmarshal(payload, &f.json); err != nil {
			t.Fatalf("a stream message is not JSON: %v: %q", err, payload)
		}
		frames = append(frames, f)
		if f.end || !more(f) {
			return frames
		}
	}
}

// The server streams work over HTTP too, with the Connect streaming
// protocol: the decision log (AdminService/TailDecisions) and the actions
// of a consumer group (ActionService/Subscribe), with the same tokens; a
// token without the role ends the stream with permission_denied.
func TestHTTPServerStreams(t *testing.T) {
	rs := redistest.Start(t)
	n := startSecureNudged(t, buildNudged(t), rs.Addr, "--audit-sample", "1")
	base := "http://" + n.http
	user := fmt.Sprintf("stream-shopper-%d", time.Now().UnixNano())
	var events []string
	for i := range 3 {
		events = append(events, fmt.Sprintf(`{"event_id":"s%d","user_id":%q,"type":"view","category":"phones","occurred_at":%q}`,
			i, user, time.Now().Add(-time.Duration(3-i)*time.Minute).UTC().Format(time.RFC3339)))
	}
	curlJSON(t, base+"/nudge.v1.IngestService/Publish", secIngest, `{"events":[`+strings.Join(events, ",")+`]}`).want(t, "Publish", http.StatusOK, "")
	var ids []string
	for range 2 {
		d := curlJSON(t, base+"/nudge.v1.DecisionService/GetDecision", secDecide, fmt.Sprintf(`{"user_id":%q,"channel":"sms","budget":"1s"}`, user))
		d.want(t, "GetDecision", http.StatusOK, "")
		ids = append(ids, field(d.body, "decision", "decisionId").(string))
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The decisions are logged off the latency path: follow the log from
	// its oldest entry until both are in it.
	var logged []string
	frames := connectStream(ctx, t, base+"/nudge.v1.AdminService/TailDecisions", secOperator, `{"from_oldest":true,"limit":2}`, func(f connectFrame) bool {
		entries, _ := f.json["entries"].([]any)
		for _, e := range entries {
			logged = append(logged, e.(map[string]any)["decisionId"].(string))
		}
		return true
	})
	if last := frames[len(frames)-1]; !last.end || last.json["error"] != nil {
		t.Errorf("TailDecisions did not end cleanly after its limit: %v", last)
	}
	if !slices.Equal(logged, ids) {
		t.Errorf("TailDecisions over HTTP: %v, want the decisions %v", logged, ids)
	}

	var action map[string]any
	subCtx, stopSub := context.WithCancel(ctx)
	connectStream(subCtx, t, base+"/nudge.v1.ActionService/Subscribe", secSender, `{"group":"sms-senders"}`, func(f connectFrame) bool {
		action, _ = f.json["action"].(map[string]any)
		return action == nil // the first action is enough
	})
	stopSub()
	if action["userId"] != user || action["triggerId"] != "category-interest-coupon" {
		t.Errorf("Subscribe over HTTP: first action %v, want the coupon of %s", action, user)
	}

	denied := connectStream(ctx, t, base+"/nudge.v1.AdminService/TailDecisions", secDecide, `{"from_oldest":true,"limit":1}`, func(connectFrame) bool { return true })
	if last := denied[len(denied)-1]; !last.end || field(last.json, "error", "code") != "permission_denied" {
		t.Errorf("TailDecisions with a decide token: %v, want the stream ended with permission_denied", denied)
	}
}
