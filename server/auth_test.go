package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/nudge-dm/nudge/client"
	"github.com/nudge-dm/nudge/delivery"
	"github.com/nudge-dm/nudge/profile"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
	"github.com/nudge-dm/nudge/server"
)

// The test tokens: one per role, one with every role, one with none.
const (
	ingestSecret    = "secret-ingest-7f3a"
	decideSecret    = "secret-decide-91c2"
	subscribeSecret = "secret-subscribe-c0de"
	adminSecret     = "secret-admin-5eed"
	allSecret       = "secret-all-a11a"
	noRoleSecret    = "secret-none-0000"
)

func testTokens() []server.Token {
	return []server.Token{
		{Name: "ingester", Secret: ingestSecret, Roles: []server.Role{server.RoleIngest}},
		{Name: "decider", Secret: decideSecret, Roles: []server.Role{server.RoleDecide}},
		{Name: "sender", Secret: subscribeSecret, Roles: []server.Role{server.RoleSubscribe}, Groups: []string{"sms"}},
		{Name: "operator", Secret: adminSecret, Roles: []server.Role{server.RoleAdmin}},
		{Name: "root", Secret: allSecret, Roles: []server.Role{server.RoleIngest, server.RoleDecide, server.RoleSubscribe, server.RoleAdmin}, Groups: []string{"*"}},
		{Name: "nobody", Secret: noRoleSecret},
	}
}

// withToken is ctx sending "authorization: Bearer <secret>".
func withToken(ctx context.Context, secret string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+secret)
}

// okStore answers every call: events applied on empty profiles, no stored
// profile, deletes that find nothing.
func okStore() *fakeStore {
	return &fakeStore{
		apply: func(_ context.Context, users []userEvents, step profile.Step) []userOutcome {
			return stepAll(users, step)
		},
		get: func(context.Context, string) (*profile.Profile, error) { return nil, profile.ErrNotFound },
		del: func(context.Context, string) (profile.DeleteResult, error) { return profile.DeleteResult{}, nil },
	}
}

// fakeOutbox has nothing to deliver and acknowledges every id; Read
// panics for group "boom".
type fakeOutbox struct{}

var _ server.Outbox = fakeOutbox{}

var errOutboxDown = errors.New("fakeOutbox: down")

func (fakeOutbox) Read(_ context.Context, group, _ string) ([]delivery.Delivery, error) {
	if group == "boom" {
		panic("outbox read: boom")
	}
	return nil, errOutboxDown
}

func (fakeOutbox) Ack(_ context.Context, _, _ string, ids []string) (int, error) {
	return len(ids), nil
}

func (fakeOutbox) AckRead(_ context.Context, _ string, ids []string) (int, error) {
	return len(ids), nil
}

func (fakeOutbox) Groups(context.Context, time.Time) ([]delivery.Group, error) { return nil, nil }

func (fakeOutbox) DeleteGroup(context.Context, string) (int, error) { return 1, nil }

func (fakeOutbox) Pending(context.Context, string, string) (int64, error) { return 0, nil }

func (fakeOutbox) Release(context.Context, string, string, []string) (int, error) {
	return 0, nil
}

// authConfig is a server with the test tokens and an outbox.
func authConfig() server.Config {
	return server.Config{Tokens: testTokens(), Outbox: fakeOutbox{}}
}

// logBuffer collects a server's JSON log lines; it is safe for the
// server's goroutines and the test's at once.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// logger writes every level as JSON into l.
func (l *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewJSONHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// entries are the log lines.
func (l *logBuffer) entries(t testing.TB) []map[string]any {
	t.Helper()
	var out []map[string]any
	for line := range strings.Lines(l.String()) {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

// finished is the "finished call" line of method (e.g. "GetDecision")
// with code, failing the test unless there is exactly one.
func (l *logBuffer) finished(t testing.TB, method string, code codes.Code) map[string]any {
	t.Helper()
	var found []map[string]any
	for _, e := range l.entries(t) {
		if e["msg"] == "finished call" && e["grpc.method"] == method && e["grpc.code"] == code.String() {
			found = append(found, e)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d finished-call lines for %s with %s, want 1; log:\n%s", len(found), method, code, l)
	}
	return found[0]
}

// serve runs srv's grpc.Server with opts over bufconn until the test ends
// and returns a dialer for it.
func serve(t testing.TB, srv *server.Server, opts ...grpc.ServerOption) func(context.Context, string) (net.Conn, error) {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	g := srv.NewGRPCServer(opts...)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = g.Serve(lis)
	}()
	t.Cleanup(func() {
		g.Stop()
		<-served
	})
	return func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }
}

func TestUnauthenticated(t *testing.T) {
	h := start(t, okStore(), authConfig())
	tests := []struct {
		name   string
		header []string // authorization values; none: no header
		msg    string
	}{
		{"no header", nil, "missing bearer token: send metadata 'authorization: Bearer <token>'"},
		{"other scheme", []string{"Basic " + decideSecret}, "missing bearer token"},
		{"scheme alone", []string{"Bearer"}, "missing bearer token"},
		{"empty token", []string{"Bearer "}, "missing bearer token"},
		{"unknown token", []string{"Bearer not-a-configured-secret"}, "unknown token"},
		{"secret of another case", []string{"Bearer " + strings.ToUpper(decideSecret)}, "unknown token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := callCtx(t)
			for _, v := range tt.header {
				ctx = metadata.AppendToOutgoingContext(ctx, "authorization", v)
			}
			_, err := h.decide.GetDecision(ctx, &nudgev1.GetDecisionRequest{UserId: "u1", Channel: "sms"})
			wantCode(t, err, codes.Unauthenticated, tt.msg)
			for _, v := range tt.header {
				if _, secret, _ := strings.Cut(v, " "); secret != "" && strings.Contains(status.Convert(err).Message(), secret) {
					t.Errorf("the message %q echoes the token", status.Convert(err).Message())
				}
			}
		})
	}
}

// roleCall is one RPC of each kind, with the code it answers once the
// caller is authorised.
type roleCall struct {
	name   string
	method string
	role   server.Role
	want   codes.Code
	call   func(ctx context.Context, h *harness) error
}

func roleCalls() []roleCall {
	return []roleCall{
		{"Publish", "/nudge.v1.IngestService/Publish", server.RoleIngest, codes.OK, func(ctx context.Context, h *harness) error {
			_, err := h.ingest.Publish(ctx, &nudgev1.PublishRequest{Events: []*nudgev1.Event{ev("e1", "u1", "view", "", now)}})
			return err
		}},
		{"Stream", "/nudge.v1.IngestService/Stream", server.RoleIngest, codes.OK, func(ctx context.Context, h *harness) error {
			stream, err := h.ingest.Stream(ctx)
			if err != nil {
				return err
			}
			if err := stream.Send(&nudgev1.StreamRequest{Seq: 1, Events: []*nudgev1.Event{ev("e1", "u1", "view", "", now)}}); err != nil && !errors.Is(err, io.EOF) {
				return err
			}
			if _, err := stream.Recv(); err != nil {
				return err
			}
			if err := stream.CloseSend(); err != nil {
				return err
			}
			if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
				return err
			}
			return nil
		}},
		{"GetDecision", "/nudge.v1.DecisionService/GetDecision", server.RoleDecide, codes.OK, func(ctx context.Context, h *harness) error {
			_, err := h.decide.GetDecision(ctx, &nudgev1.GetDecisionRequest{UserId: "u1", Channel: "sms"})
			return err
		}},
		{"BatchGetDecisions", "/nudge.v1.DecisionService/BatchGetDecisions", server.RoleDecide, codes.OK, func(ctx context.Context, h *harness) error {
			_, err := h.decide.BatchGetDecisions(ctx, &nudgev1.BatchGetDecisionsRequest{Queries: []*nudgev1.DecisionQuery{{UserId: "u1", Channel: "sms"}}})
			return err
		}},
		// Subscribe without a group is invalid: InvalidArgument shows the
		// call got past authentication.
		{"Subscribe", "/nudge.v1.ActionService/Subscribe", server.RoleSubscribe, codes.InvalidArgument, func(ctx context.Context, h *harness) error {
			stream, err := nudgev1.NewActionServiceClient(h.conn).Subscribe(ctx, &nudgev1.SubscribeRequest{})
			if err != nil {
				return err
			}
			_, err = stream.Recv()
			return err
		}},
		{"Ack", "/nudge.v1.ActionService/Ack", server.RoleSubscribe, codes.OK, func(ctx context.Context, h *harness) error {
			_, err := nudgev1.NewActionServiceClient(h.conn).Ack(ctx, &nudgev1.AckRequest{Group: "sms", AckIds: []string{"0:1-0"}})
			return err
		}},
		{"GetProfile", "/nudge.v1.ProfileService/GetProfile", server.RoleAdmin, codes.NotFound, func(ctx context.Context, h *harness) error {
			_, err := h.profiles.GetProfile(ctx, &nudgev1.GetProfileRequest{UserId: "u1"})
			return err
		}},
		{"DeleteProfile", "/nudge.v1.ProfileService/DeleteProfile", server.RoleAdmin, codes.OK, func(ctx context.Context, h *harness) error {
			_, err := h.profiles.DeleteProfile(ctx, &nudgev1.DeleteProfileRequest{UserId: "u1"})
			return err
		}},
		{"GetRules", "/nudge.v1.AdminService/GetRules", server.RoleAdmin, codes.OK, func(ctx context.Context, h *harness) error {
			_, err := nudgev1.NewAdminServiceClient(h.conn).GetRules(ctx, &nudgev1.GetRulesRequest{})
			return err
		}},
		{"TestRules", "/nudge.v1.AdminService/TestRules", server.RoleAdmin, codes.OK, func(ctx context.Context, h *harness) error {
			_, err := nudgev1.NewAdminServiceClient(h.conn).TestRules(ctx, &nudgev1.TestRulesRequest{UserId: "u1", Channels: []string{"sms"}})
			return err
		}},
	}
}

// consoleSecret is the console role's test token's.
const consoleSecret = "secret-console-c0c0"

// TestConsoleRole: a console token reads what admin reads (every method
// of AdminService and ProfileService but DeleteGroup and DeleteProfile)
// and nothing else; every other service refuses it.
func TestConsoleRole(t *testing.T) {
	cfg := authConfig()
	cfg.Tokens = append(cfg.Tokens, server.Token{Name: "console", Secret: consoleSecret, Roles: []server.Role{server.RoleConsole}})
	h := start(t, okStore(), cfg)
	ctx := withToken(callCtx(t), consoleSecret)
	admin := nudgev1.NewAdminServiceClient(h.conn)

	t.Run("reads", func(t *testing.T) {
		if _, err := admin.GetRules(ctx, &nudgev1.GetRulesRequest{}); err != nil {
			t.Errorf("GetRules: %v", err)
		}
		// NOT_FOUND: past authorization, the store has no profile.
		_, err := h.profiles.GetProfile(ctx, &nudgev1.GetProfileRequest{UserId: "u1"})
		wantCode(t, err, codes.NotFound, "")
		resp, err := admin.TestRules(ctx, &nudgev1.TestRulesRequest{UserId: "u1", Event: ev("e1", "u1", "view", "phones", now)})
		if err != nil || len(resp.GetDecisions()) == 0 {
			t.Errorf("TestRules: %v, %v", resp, err)
		}
	})

	denied := []struct {
		name, method string
		call         func() error
	}{
		{"DeleteProfile", "/nudge.v1.ProfileService/DeleteProfile", func() error {
			_, err := h.profiles.DeleteProfile(ctx, &nudgev1.DeleteProfileRequest{UserId: "u1"})
			return err
		}},
		{"DeleteGroup", "/nudge.v1.AdminService/DeleteGroup", func() error {
			_, err := admin.DeleteGroup(ctx, &nudgev1.DeleteGroupRequest{Group: "sms"})
			return err
		}},
		{"Publish", "/nudge.v1.IngestService/Publish", func() error {
			_, err := h.ingest.Publish(ctx, &nudgev1.PublishRequest{Events: []*nudgev1.Event{ev("e1", "u1", "view", "", now)}})
			return err
		}},
		{"GetDecision", "/nudge.v1.DecisionService/GetDecision", func() error {
			_, err := h.decide.GetDecision(ctx, &nudgev1.GetDecisionRequest{UserId: "u1", Channel: "sms"})
			return err
		}},
	}
	for _, d := range denied {
		t.Run("denied "+d.name, func(t *testing.T) {
			err := d.call()
			wantCode(t, err, codes.PermissionDenied, `token "console" lacks role "`)
			wantCode(t, err, codes.PermissionDenied, "required by "+d.method)
		})
	}

	t.Run("TokenRoles", func(t *testing.T) {
		if !h.srv.AuthRequired() {
			t.Error("AuthRequired false with tokens")
		}
		if name, roles, ok := h.srv.TokenRoles(consoleSecret); !ok || name != "console" || !slices.Equal(roles, []string{"console"}) {
			t.Errorf("TokenRoles(console's secret) = %q, %v, %v", name, roles, ok)
		}
		for _, secret := range []string{"", "not-a-secret"} {
			if name, roles, ok := h.srv.TokenRoles(secret); ok || name != "" || roles != nil {
				t.Errorf("TokenRoles(%q) = %q, %v, %v; want no token", secret, name, roles, ok)
			}
		}
		open := start(t, okStore(), serverConfig())
		if _, _, ok := open.srv.TokenRoles(consoleSecret); ok || open.srv.AuthRequired() {
			t.Error("a server without tokens knows a token")
		}
	})

	t.Run("the refusal of a read names console", func(t *testing.T) {
		_, err := admin.GetRules(withToken(callCtx(t), decideSecret), &nudgev1.GetRulesRequest{})
		wantCode(t, err, codes.PermissionDenied,
			`token "decider" lacks role "admin", required by /nudge.v1.AdminService/GetRules (the read-only role "console" may call it too)`)
		_, err = h.profiles.DeleteProfile(withToken(callCtx(t), decideSecret), &nudgev1.DeleteProfileRequest{UserId: "u1"})
		if st := status.Convert(err); strings.Contains(st.Message(), "console") {
			t.Errorf("DeleteProfile's refusal names console: %q", st.Message())
		}
	})

	// Every method, so that one added later is decided on: a new write
	// of AdminService or ProfileService stays admin's (add it to
	// writes), a new read needs a methodRoles entry.
	writes := map[string]bool{
		"/nudge.v1.ProfileService/DeleteProfile": true,
		"/nudge.v1.AdminService/DeleteGroup":     true,
	}
	reads := map[string]bool{
		nudgev1.AdminService_ServiceDesc.ServiceName:   true,
		nudgev1.ProfileService_ServiceDesc.ServiceName: true,
	}
	for service, info := range h.grpc.GetServiceInfo() {
		if !strings.HasPrefix(service, "nudge.") {
			continue // health and reflection: see TestEveryMethodHasARule
		}
		for _, m := range info.Methods {
			full := "/" + service + "/" + m.Name
			t.Run(service+"/"+m.Name, func(t *testing.T) {
				err := invoke(t, h.conn, full, m, consoleSecret)
				denied := status.Code(err) == codes.PermissionDenied
				if want := !reads[service] || writes[full]; denied != want {
					t.Errorf("console token: %v; want denied %v", err, want)
				}
			})
		}
	}
}

// TestRoles: every service answers a token with its role and refuses,
// with PermissionDenied naming the token, the role and the method, every
// token without it.
func TestRoles(t *testing.T) {
	h := start(t, okStore(), authConfig())
	for _, c := range roleCalls() {
		for _, tok := range testTokens() {
			t.Run(c.name+"/"+tok.Name, func(t *testing.T) {
				err := c.call(withToken(callCtx(t), tok.Secret), h)
				for _, r := range tok.Roles {
					if r == c.role {
						if got := status.Code(err); got != c.want {
							t.Fatalf("got %v, want %s", err, c.want)
						}
						return
					}
				}
				wantCode(t, err, codes.PermissionDenied,
					`token "`+tok.Name+`" lacks role "`+string(c.role)+`", required by `+c.method)
			})
		}
	}
}

// TestEveryMethodHasARule calls every method of every service the server
// registers, so that an RPC added later cannot be left unprotected: a
// token with every role passes authentication everywhere (a method
// without an access rule would be denied to it), a token without roles
// only where any token may go (reflection) and the health service, and no
// token only the health service.
func TestEveryMethodHasARule(t *testing.T) {
	h := start(t, okStore(), authConfig())
	openToAny := map[string]bool{
		"grpc.reflection.v1.ServerReflection":      true,
		"grpc.reflection.v1alpha.ServerReflection": true,
	}
	health := healthpb.Health_ServiceDesc.ServiceName
	methods := 0
	for service, info := range h.grpc.GetServiceInfo() {
		for _, m := range info.Methods {
			methods++
			full := "/" + service + "/" + m.Name
			t.Run(service+"/"+m.Name, func(t *testing.T) {
				isOpen := func(err error) bool {
					c := status.Code(err)
					return c != codes.Unauthenticated && c != codes.PermissionDenied
				}
				if err := invoke(t, h.conn, full, m, allSecret); !isOpen(err) {
					t.Errorf("a token with every role: %v", err)
				}
				err := invoke(t, h.conn, full, m, noRoleSecret)
				switch {
				case service == health || openToAny[service]:
					if !isOpen(err) {
						t.Errorf("a token without roles: %v", err)
					}
				case status.Code(err) != codes.PermissionDenied:
					t.Errorf("a token without roles: got %v, want PermissionDenied", err)
				}
				err = invoke(t, h.conn, full, m, "")
				switch {
				case service == health:
					if !isOpen(err) {
						t.Errorf("no token: %v", err)
					}
				case status.Code(err) != codes.Unauthenticated:
					t.Errorf("no token: got %v, want Unauthenticated", err)
				}
			})
		}
	}
	if methods < 12 {
		t.Fatalf("only %d methods registered", methods)
	}
}

// invoke calls method with an empty request (a stream: one empty request
// if the client does not stream, else none) and returns the call's status:
// nil for OK or a first response.
func invoke(t *testing.T, conn *grpc.ClientConn, full string, m grpc.MethodInfo, secret string) error {
	t.Helper()
	ctx, cancel := context.WithCancel(callCtx(t))
	defer cancel() // ends a stream that would not end by itself (health Watch)
	if secret != "" {
		ctx = withToken(ctx, secret)
	}
	if !m.IsClientStream && !m.IsServerStream {
		return conn.Invoke(ctx, full, &emptypb.Empty{}, &emptypb.Empty{})
	}
	stream, err := conn.NewStream(ctx, &grpc.StreamDesc{StreamName: m.Name, ServerStreams: m.IsServerStream, ClientStreams: m.IsClientStream}, full)
	if err != nil {
		return err
	}
	if !m.IsClientStream {
		if err := stream.SendMsg(&emptypb.Empty{}); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
	}
	if err := stream.CloseSend(); err != nil {
		return err
	}
	if err := stream.RecvMsg(&emptypb.Empty{}); !errors.Is(err, io.EOF) {
		return err
	}
	return nil
}

func TestHealthWithoutToken(t *testing.T) {
	h := start(t, okStore(), authConfig())
	checkHealth(t, h, healthpb.HealthCheckResponse_SERVING)
}

func TestReflectionNeedsAToken(t *testing.T) {
	h := start(t, okStore(), authConfig())
	listServices := func(ctx context.Context) error {
		stream, err := reflectionpb.NewServerReflectionClient(h.conn).ServerReflectionInfo(ctx)
		if err != nil {
			return err
		}
		if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		if len(resp.GetListServicesResponse().GetService()) == 0 {
			t.Errorf("no services listed: %v", resp)
		}
		if err := stream.CloseSend(); err != nil {
			return err
		}
		if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
			return err
		}
		return nil
	}
	wantCode(t, listServices(callCtx(t)), codes.Unauthenticated, "missing bearer token")
	wantCode(t, listServices(withToken(callCtx(t), "wrong")), codes.Unauthenticated, "unknown token")
	for _, secret := range []string{noRoleSecret, decideSecret} {
		if err := listServices(withToken(callCtx(t), secret)); err != nil {
			t.Errorf("reflection with a valid token: %v", err)
		}
	}
}

// TestAuthOff: without tokens nothing is authenticated, and TokenName
// knows it.
func TestAuthOff(t *testing.T) {
	var name string
	var named bool
	h := start(t, &fakeStore{get: func(ctx context.Context, _ string) (*profile.Profile, error) {
		name, named = server.TokenName(ctx)
		return nil, profile.ErrNotFound
	}}, server.Config{})
	if _, err := h.decide.GetDecision(callCtx(t), &nudgev1.GetDecisionRequest{UserId: "u1", Channel: "sms"}); err != nil {
		t.Fatal(err)
	}
	if named {
		t.Errorf("TokenName = %q, true without authentication", name)
	}
}

// TestTokenName: handlers see the token the call authenticated with.
func TestTokenName(t *testing.T) {
	names := make(chan string, 1)
	store := okStore()
	store.get = func(ctx context.Context, _ string) (*profile.Profile, error) {
		name, ok := server.TokenName(ctx)
		if !ok {
			name = "(none)"
		}
		names <- name
		return nil, profile.ErrNotFound
	}
	h := start(t, store, authConfig())
	if _, err := h.decide.GetDecision(withToken(callCtx(t), decideSecret), &nudgev1.GetDecisionRequest{UserId: "u1", Channel: "sms"}); err != nil {
		t.Fatal(err)
	}
	if got := receive(t, names, "the store's call"); got != "decider" {
		t.Errorf("TokenName = %q, want decider", got)
	}
}

// TestAuthWithClient: the Go client's WithToken is what the server
// expects.
func TestAuthWithClient(t *testing.T) {
	srv, err := server.New(okStore(), testRules(t), server.Config{Now: clock, Tokens: testTokens(),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	dialer := serve(t, srv)
	dial := func(secret string) *client.Client {
		c, err := client.Dial("passthrough:///bufconn", client.WithInsecure(), client.WithToken(secret),
			client.WithDialOptions(grpc.WithContextDialer(dialer)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	if _, err := dial(decideSecret).Decide(callCtx(t), "u1", "sms"); err != nil {
		t.Errorf("Decide with a decide token: %v", err)
	}
	_, err = dial(ingestSecret).Decide(callCtx(t), "u1", "sms")
	wantCode(t, err, codes.PermissionDenied, `token "ingester" lacks role "decide"`)
	_, err = dial("nope").Decide(callCtx(t), "u1", "sms")
	wantCode(t, err, codes.Unauthenticated, "unknown token")
}

func TestTokenValidation(t *testing.T) {
	ok := func(name, secret string, roles ...server.Role) server.Token {
		return server.Token{Name: name, Secret: secret, Roles: roles}
	}
	tests := []struct {
		name   string
		tokens []server.Token
		err    string // "" means valid
	}{
		{"none", nil, ""},
		{"valid", testTokens(), ""},
		{"no roles", []server.Token{ok("a", "s1")}, ""},
		{"console", []server.Token{ok("a", "s1", server.RoleConsole)}, ""},
		{"empty name", []server.Token{ok("a", "s1"), ok("", "s2")}, "token 1: empty name"},
		{"duplicate name", []server.Token{ok("a", "s1"), ok("a", "s2")}, `token "a": duplicate name`},
		{"empty secret", []server.Token{ok("a", "")}, `token "a": empty secret`},
		{"duplicate secret", []server.Token{ok("a", "shared-secret"), ok("b", "shared-secret")}, `token "b": same secret as token "a"`},
		{"unknown role", []server.Token{ok("a", "s1", server.RoleDecide, "root")}, `token "a": unknown role "root"`},
		{"role in capitals", []server.Token{ok("a", "s1", "Admin")}, `token "a": unknown role "Admin"`},
		{"negative rate", []server.Token{{Name: "a", Secret: "s1", EventsPerSecond: -1}}, `token "a": EventsPerSecond is -1`},
		{"NaN rate", []server.Token{{Name: "a", Secret: "s1", DecisionsPerSecond: math.NaN()}}, `token "a": DecisionsPerSecond is NaN`},
		{"infinite rate", []server.Token{{Name: "a", Secret: "s1", DecisionsPerSecond: math.Inf(1)}}, `token "a": DecisionsPerSecond is +Inf`},
		{"groups", []server.Token{{Name: "a", Secret: "s1", Groups: []string{"sms", "push-*", "x.y_z-1", "*"}}}, ""},
		{"group in capitals", []server.Token{{Name: "a", Secret: "s1", Groups: []string{"SMS"}}}, `token "a": group "SMS": does not match`},
		{"empty group", []server.Token{{Name: "a", Secret: "s1", Groups: []string{""}}}, `token "a": group "": does not match`},
		{"wildcard inside", []server.Token{{Name: "a", Secret: "s1", Groups: []string{"sms-*-eu"}}}, `group "sms-*-eu": * may only end a name`},
		{"two wildcards", []server.Token{{Name: "a", Secret: "s1", Groups: []string{"**"}}}, `group "**": * may only end a name`},
		{"group too long", []server.Token{{Name: "a", Secret: "s1", Groups: []string{strings.Repeat("g", 65)}}}, "longer than 64 characters"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			errs := map[string]error{"ValidateTokens": server.ValidateTokens(tt.tokens)}
			_, errs["New"] = server.New(okStore(), testRules(t), server.Config{Tokens: tt.tokens})
			for fn, err := range errs {
				switch {
				case tt.err == "" && err != nil:
					t.Errorf("%s: %v", fn, err)
				case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
					t.Errorf("%s: got %v, want an error containing %q", fn, err, tt.err)
				}
				for _, tok := range tt.tokens {
					if err != nil && tok.Secret != "" && strings.Contains(err.Error(), tok.Secret) {
						t.Errorf("%s: the error %q shows a secret", fn, err)
					}
				}
			}
		})
	}
}

// TestDecideIsReadOnly: a decide token gets plain decisions only; reserving
// a cap slot (which changes the user's state) needs send, and the explain
// trace (which shows consent, time zone, purchases and sends) needs explain
// or admin.
func TestDecideIsReadOnly(t *testing.T) {
	cfg := authConfig()
	cfg.Tokens = append(cfg.Tokens,
		server.Token{Name: "sms-sender", Secret: "secret-send-5e7d", Roles: []server.Role{server.RoleDecide, server.RoleSend}},
		server.Token{Name: "support", Secret: "secret-explain-e8a1", Roles: []server.Role{server.RoleDecide, server.RoleExplain}},
		server.Token{Name: "operator+decide", Secret: "secret-opdecide-0a0a", Roles: []server.Role{server.RoleDecide, server.RoleAdmin}},
	)
	h := start(t, okStore(), cfg)
	single := func(reserve, explain bool) func(ctx context.Context) error {
		return func(ctx context.Context) error {
			req := &nudgev1.GetDecisionRequest{UserId: "u1", Channel: "sms", Reserve: reserve, Explain: explain}
			if reserve {
				req.IdempotencyKey = "k-1"
			}
			_, err := h.decide.GetDecision(ctx, req)
			return err
		}
	}
	batch := func(ctx context.Context) error {
		_, err := h.decide.BatchGetDecisions(ctx, &nudgev1.BatchGetDecisionsRequest{Queries: queries(1), Explain: true})
		return err
	}
	tests := []struct {
		name   string
		secret string
		call   func(ctx context.Context) error
		denied string // "" when allowed
	}{
		{"decide: plain decision", decideSecret, single(false, false), ""},
		{"decide: reserve", decideSecret, single(true, false), `token "decider" lacks role "send", required to reserve a frequency-cap slot`},
		{"decide: explain", decideSecret, single(false, true), `token "decider" lacks role "explain", required to ask for an explain trace`},
		{"decide: batch explain", decideSecret, batch, `token "decider" lacks role "explain"`},
		{"send: reserve", "secret-send-5e7d", single(true, false), ""},
		{"send: explain", "secret-send-5e7d", single(false, true), `lacks role "explain"`},
		{"explain: explain", "secret-explain-e8a1", single(false, true), ""},
		{"explain: batch explain", "secret-explain-e8a1", batch, ""},
		{"explain: reserve", "secret-explain-e8a1", single(true, false), `lacks role "send"`},
		{"admin: explain", "secret-opdecide-0a0a", single(false, true), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call(withToken(callCtx(t), tt.secret))
			if tt.denied == "" {
				if status.Code(err) == codes.PermissionDenied || status.Code(err) == codes.Unauthenticated {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			wantCode(t, err, codes.PermissionDenied, tt.denied)
		})
	}
}
