package console

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nudge-dm/nudge/decision"
	"github.com/nudge-dm/nudge/delivery"
	"github.com/nudge-dm/nudge/profile"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// fakeAuth knows two tokens: "s3cret-admin" (admin) and "s3cret-ingest"
// (ingest only).
type fakeAuth struct{ open bool }

func (a fakeAuth) AuthRequired() bool { return !a.open }
func (a fakeAuth) TokenRoles(secret string) (string, []string, bool) {
	switch secret {
	case "s3cret-admin":
		return "ops", []string{"admin"}, true
	case "s3cret-viewer":
		return "viewer", []string{"console"}, true
	case "s3cret-ingest":
		return "producer", []string{"ingest"}, true
	}
	return "", nil, false
}

// fakeConn answers the console's unary calls from handlers by method,
// and records the authorization each call carried.
type fakeConn struct {
	mu       sync.Mutex
	handlers map[string]func(ctx context.Context, req proto.Message) (proto.Message, error)
	auths    []string
}

func (f *fakeConn) Invoke(ctx context.Context, method string, args, reply any, _ ...grpc.CallOption) error {
	md, _ := metadata.FromOutgoingContext(ctx)
	f.mu.Lock()
	f.auths = append(f.auths, strings.Join(md.Get("authorization"), ","))
	h := f.handlers[method]
	f.mu.Unlock()
	if h == nil {
		return status.Errorf(codes.Unimplemented, "fake: %s", method)
	}
	res, err := h(ctx, args.(proto.Message))
	if err != nil {
		return err
	}
	proto.Merge(reply.(proto.Message), res)
	return nil
}

func (f *fakeConn) NewStream(context.Context, *grpc.StreamDesc, string, ...grpc.CallOption) (grpc.ClientStream, error) {
	return nil, errors.New("fake: no streams")
}

var testNow = time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)

func newTestConsole(t *testing.T, auth Auth) (*httptest.Server, *fakeConn) {
	t.Helper()
	conn := &fakeConn{handlers: map[string]func(context.Context, proto.Message) (proto.Message, error){
		nudgev1.AdminService_GetRules_FullMethodName: func(context.Context, proto.Message) (proto.Message, error) {
			return &nudgev1.GetRulesResponse{Version: "abc123def456", LoadedAt: timestamppb.New(testNow.Add(-time.Hour)), Triggers: 3, Offers: 2}, nil
		},
		nudgev1.ProfileService_DeleteProfile_FullMethodName: func(ctx context.Context, _ proto.Message) (proto.Message, error) {
			md, _ := metadata.FromOutgoingContext(ctx)
			if strings.Join(md.Get("authorization"), "") != "Bearer s3cret-admin" {
				return nil, status.Error(codes.PermissionDenied, `token "viewer" lacks the admin role`)
			}
			return &nudgev1.DeleteProfileResponse{Deleted: true, ActionsDeleted: 2}, nil
		},
		nudgev1.ProfileService_GetProfile_FullMethodName: func(_ context.Context, req proto.Message) (proto.Message, error) {
			id := req.(*nudgev1.GetProfileRequest).GetUserId()
			if id != "u1" {
				return nil, status.Errorf(codes.NotFound, "no profile for %s", id)
			}
			return &nudgev1.GetProfileResponse{Profile: &nudgev1.Profile{UserId: "u1", Version: 7, UpdatedAt: timestamppb.New(testNow)}}, nil
		},
	}}
	c, err := New(Config{Auth: auth, Conn: conn, Now: func() time.Time { return testNow }, Version: "nudged test", Log: slog.New(slog.NewTextHandler(t.Output(), nil))})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(c)
	t.Cleanup(srv.Close)
	return srv, conn
}

// browser is an HTTP client with cookies that does not follow redirects.
func browser(t *testing.T) *http.Client {
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func get(t *testing.T, c *http.Client, u string) (*http.Response, string) {
	t.Helper()
	res, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res, string(b)
}

func post(t *testing.T, c *http.Client, u string, form url.Values, origin string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, u, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if origin != "" {
		req.Header.Set("Origin", origin)
	}
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res, string(b)
}

var csrfField = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func csrfOf(t *testing.T, page string) string {
	t.Helper()
	m := csrfField.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no csrf field in the page:\n%s", page)
	}
	return m[1]
}

// signIn signs in with secret and returns the response to the form.
func signIn(t *testing.T, srv *httptest.Server, c *http.Client, secret string) *http.Response {
	t.Helper()
	_, page := get(t, c, srv.URL+"/console/login")
	res, _ := post(t, c, srv.URL+"/console/login", url.Values{"csrf": {csrfOf(t, page)}, "token": {secret}, "next": {"/console/campaigns"}}, srv.URL)
	return res
}

func TestSignIn(t *testing.T) {
	srv, conn := newTestConsole(t, fakeAuth{})
	c := browser(t)
	res, _ := get(t, c, srv.URL+"/console/")
	if res.StatusCode != http.StatusSeeOther || !strings.HasPrefix(res.Header.Get("Location"), "/console/login") {
		t.Fatalf("signed out: %d to %q, want a redirect to sign in", res.StatusCode, res.Header.Get("Location"))
	}
	for _, tc := range []struct {
		secret string
		code   int
		msg    string
	}{
		{"wrong", http.StatusUnauthorized, "Unknown token"},
		{"s3cret-ingest", http.StatusForbidden, "needs admin or console"},
		{"", http.StatusUnauthorized, "Enter a token"},
	} {
		_, page := get(t, c, srv.URL+"/console/login")
		res, body := post(t, c, srv.URL+"/console/login", url.Values{"csrf": {csrfOf(t, page)}, "token": {tc.secret}}, srv.URL)
		if res.StatusCode != tc.code || !strings.Contains(body, tc.msg) {
			t.Errorf("token %q: %d, want %d with %q", tc.secret, res.StatusCode, tc.code, tc.msg)
		}
		if len(res.Cookies()) > 0 && res.Cookies()[0].Name == sessionCookie {
			t.Errorf("token %q got a session cookie", tc.secret)
		}
	}
	res = signIn(t, srv, c, "s3cret-admin")
	if res.StatusCode != http.StatusSeeOther || res.Header.Get("Location") != "/console/campaigns" {
		t.Fatalf("sign-in: %d to %q", res.StatusCode, res.Header.Get("Location"))
	}
	var ck *http.Cookie
	for _, k := range res.Cookies() {
		if k.Name == sessionCookie {
			ck = k
		}
	}
	if ck == nil || !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || ck.Path != Prefix || strings.Contains(ck.Value, "s3cret") {
		t.Fatalf("session cookie %+v: want HttpOnly, SameSite=Strict, path %s, not the token", ck, Prefix)
	}
	res, body := get(t, c, srv.URL+"/console/")
	if res.StatusCode != http.StatusOK || !strings.Contains(body, "abc123def456") || !strings.Contains(body, ">ops<") {
		t.Fatalf("overview: %d\n%s", res.StatusCode, body)
	}
	if got := conn.auths[len(conn.auths)-1]; got != "Bearer s3cret-admin" {
		t.Fatalf("the console called with authorization %q, want the session's token", got)
	}
}

func TestSecurityHeaders(t *testing.T) {
	srv, _ := newTestConsole(t, fakeAuth{})
	res, _ := get(t, browser(t), srv.URL+"/console/login")
	csp := res.Header.Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'", "form-action 'self'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("CSP %q lacks %q", csp, want)
		}
	}
	if strings.Contains(csp, "unsafe") {
		t.Errorf("CSP %q allows unsafe sources", csp)
	}
	if res.Header.Get("X-Frame-Options") != "DENY" || res.Header.Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("headers %v", res.Header)
	}
}

func TestCSRF(t *testing.T) {
	srv, _ := newTestConsole(t, fakeAuth{})
	c := browser(t)
	// Sign-in without the form's token, or from another origin.
	_, page := get(t, c, srv.URL+"/console/login")
	if res, _ := post(t, c, srv.URL+"/console/login", url.Values{"token": {"s3cret-admin"}}, srv.URL); res.StatusCode != http.StatusForbidden {
		t.Errorf("sign-in without the csrf field: %d, want 403", res.StatusCode)
	}
	if res, _ := post(t, c, srv.URL+"/console/login", url.Values{"csrf": {csrfOf(t, page)}, "token": {"s3cret-admin"}}, "https://evil.example"); res.StatusCode != http.StatusForbidden {
		t.Errorf("sign-in from another origin: %d, want 403", res.StatusCode)
	}
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/console/login", strings.NewReader(url.Values{"csrf": {csrfOf(t, page)}, "token": {"s3cret-admin"}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Sec-Fetch-Site", "cross-site")
	if res, err := c.Do(req); err != nil || res.StatusCode != http.StatusForbidden {
		t.Errorf("sign-in with Sec-Fetch-Site cross-site: %v %v, want 403", res.StatusCode, err)
	}
	signIn(t, srv, c, "s3cret-admin")
	_, page = get(t, c, srv.URL+"/console/user?id=u1")
	tok := csrfOf(t, page)
	form := url.Values{"id": {"u1"}, "confirm": {"u1"}}
	if res, _ := post(t, c, srv.URL+"/console/user/erase", form, srv.URL); res.StatusCode != http.StatusForbidden {
		t.Errorf("erase without csrf: %d, want 403", res.StatusCode)
	}
	form.Set("csrf", "x"+tok)
	if res, _ := post(t, c, srv.URL+"/console/user/erase", form, srv.URL); res.StatusCode != http.StatusForbidden {
		t.Errorf("erase with a wrong csrf: %d, want 403", res.StatusCode)
	}
	form.Set("csrf", tok)
	if res, _ := post(t, c, srv.URL+"/console/user/erase", form, "https://evil.example"); res.StatusCode != http.StatusForbidden {
		t.Errorf("erase from another origin: %d, want 403", res.StatusCode)
	}
	form.Set("confirm", "u2")
	if res, body := post(t, c, srv.URL+"/console/user/erase", form, srv.URL); res.StatusCode != http.StatusBadRequest || !strings.Contains(body, "type the user id") {
		t.Errorf("erase without confirmation: %d, want 400", res.StatusCode)
	}
	form.Set("confirm", "u1")
	res, _ := post(t, c, srv.URL+"/console/user/erase", form, srv.URL)
	if res.StatusCode != http.StatusSeeOther || !strings.Contains(res.Header.Get("Location"), "erased=") {
		t.Errorf("erase: %d to %q", res.StatusCode, res.Header.Get("Location"))
	}
}

// A console token sees the pages but its erase is refused by the server
// (DeleteProfile needs admin), and the page says so.
func TestEraseNeedsAdmin(t *testing.T) {
	srv, _ := newTestConsole(t, fakeAuth{})
	c := browser(t)
	signIn(t, srv, c, "s3cret-viewer")
	_, page := get(t, c, srv.URL+"/console/user?id=u1")
	if strings.Contains(page, `id="erase"`) {
		t.Error("the erase form is shown to a console token")
	}
	res, body := post(t, c, srv.URL+"/console/user/erase", url.Values{"csrf": {csrfOf(t, page)}, "id": {"u1"}, "confirm": {"u1"}}, srv.URL)
	if res.StatusCode != http.StatusForbidden || !strings.Contains(body, "admin role") {
		t.Fatalf("erase by a console token: %d\n%s", res.StatusCode, body)
	}
}

func TestSignOut(t *testing.T) {
	srv, _ := newTestConsole(t, fakeAuth{})
	c := browser(t)
	signIn(t, srv, c, "s3cret-admin")
	_, page := get(t, c, srv.URL+"/console/")
	res, _ := post(t, c, srv.URL+"/console/logout", url.Values{"csrf": {csrfOf(t, page)}}, srv.URL)
	if res.StatusCode != http.StatusSeeOther {
		t.Fatalf("sign out: %d", res.StatusCode)
	}
	if res, _ := get(t, c, srv.URL+"/console/"); res.StatusCode != http.StatusSeeOther {
		t.Fatalf("after sign-out: %d, want a redirect to sign in", res.StatusCode)
	}
}

func TestOpenMode(t *testing.T) {
	srv, conn := newTestConsole(t, fakeAuth{open: true})
	c := browser(t)
	res, body := get(t, c, srv.URL+"/console/")
	if res.StatusCode != http.StatusOK || !strings.Contains(body, "No auth tokens are configured") {
		t.Fatalf("open mode: %d\n%s", res.StatusCode, body)
	}
	if got := conn.auths[len(conn.auths)-1]; got != "" {
		t.Fatalf("open mode sent authorization %q", got)
	}
	// A POST still needs the session's CSRF token.
	if res, _ := post(t, c, srv.URL+"/console/user/erase", url.Values{"id": {"u1"}, "confirm": {"u1"}}, srv.URL); res.StatusCode != http.StatusForbidden {
		t.Fatalf("open mode erase without csrf: %d", res.StatusCode)
	}
}

func TestSessionsExpire(t *testing.T) {
	now := testNow
	ss := newSessions(time.Hour, 10*time.Minute, 2, func() time.Time { return now })
	a := ss.start("t", "a", nil)
	now = now.Add(9 * time.Minute)
	if ss.get(a.id) == nil {
		t.Fatal("a session seen 9 minutes ago ended")
	}
	now = now.Add(11 * time.Minute)
	if ss.get(a.id) != nil {
		t.Fatal("an idle session lived on")
	}
	b := ss.start("t", "b", nil)
	for range 7 {
		now = now.Add(9 * time.Minute)
		ss.get(b.id)
	}
	if ss.get(b.id) != nil {
		t.Fatal("a session outlived its lifetime")
	}
	x, y := ss.start("t", "x", nil), ss.start("t", "y", nil)
	now = now.Add(time.Minute)
	ss.get(x.id)
	z := ss.start("t", "z", nil) // evicts y, the least recently seen
	if ss.get(y.id) != nil || ss.get(x.id) == nil || ss.get(z.id) == nil {
		t.Fatal("past max, the least recently seen session should go")
	}
}

func TestNotFoundPage(t *testing.T) {
	srv, _ := newTestConsole(t, fakeAuth{open: true})
	res, body := get(t, browser(t), srv.URL+"/console/nope")
	if res.StatusCode != http.StatusNotFound || !strings.Contains(body, "No console page") {
		t.Fatalf("%d\n%s", res.StatusCode, body)
	}
}

func TestUserNotFound(t *testing.T) {
	srv, _ := newTestConsole(t, fakeAuth{open: true})
	res, body := get(t, browser(t), srv.URL+"/console/user?id=ghost")
	if res.StatusCode != http.StatusOK || !strings.Contains(body, "No profile for &#34;ghost&#34;") {
		t.Fatalf("%d\n%s", res.StatusCode, body)
	}
}

// Failed sign-ins from one address are throttled: after signInBurst, a
// correct token too is refused until the allowance comes back.
func TestSignInThrottled(t *testing.T) {
	now := testNow
	conn := &fakeConn{handlers: map[string]func(context.Context, proto.Message) (proto.Message, error){}}
	c, err := New(Config{Auth: fakeAuth{}, Conn: conn, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(c)
	defer srv.Close()
	b := browser(t)
	try := func(secret string) int {
		_, page := get(t, b, srv.URL+"/console/login")
		res, _ := post(t, b, srv.URL+"/console/login", url.Values{"csrf": {csrfOf(t, page)}, "token": {secret}}, srv.URL)
		return res.StatusCode
	}
	for i := range signInBurst {
		if got := try("guess"); got != http.StatusUnauthorized {
			t.Fatalf("failure %d: %d, want 401", i+1, got)
		}
	}
	if got := try("s3cret-admin"); got != http.StatusTooManyRequests {
		t.Fatalf("after %d failures: %d, want 429", signInBurst, got)
	}
	now = now.Add(signInEvery)
	if got := try("s3cret-admin"); got != http.StatusSeeOther {
		t.Fatalf("after waiting: %d, want a sign-in", got)
	}
}

// A rules file refused on reload is shown on the overview, with why.
func TestOverviewShowsRefusal(t *testing.T) {
	srv, conn := newTestConsole(t, fakeAuth{open: true})
	conn.handlers[nudgev1.AdminService_GetRules_FullMethodName] = func(context.Context, proto.Message) (proto.Message, error) {
		return &nudgev1.GetRulesResponse{Version: "abc", LoadedAt: timestamppb.New(testNow), Refusal: &nudgev1.RulesRefusal{
			At: timestamppb.New(testNow), Error: "rules.yaml:7: trigger t: when: <script>bad</script>", Version: "def",
		}}, nil
	}
	_, body := get(t, browser(t), srv.URL+"/console/")
	if !strings.Contains(body, `id="refusal"`) || !strings.Contains(body, "rules.yaml:7: trigger t: when: &lt;script&gt;") {
		t.Fatalf("overview without the refusal, or unescaped:\n%s", body)
	}
}

// A playground run: the form's fields reach TestRules as the request,
// problems are listed with their lines, and a field that does not parse
// is a 400 naming it, without a call.
func TestPlayground(t *testing.T) {
	srv, conn := newTestConsole(t, fakeAuth{open: true})
	var got *nudgev1.TestRulesRequest
	conn.handlers[nudgev1.AdminService_TestRules_FullMethodName] = func(_ context.Context, req proto.Message) (proto.Message, error) {
		got = req.(*nudgev1.TestRulesRequest)
		return &nudgev1.TestRulesResponse{Problems: []*nudgev1.RulesProblem{{Line: 5, RuleId: "broken", Field: "when", Message: "syntax error"}}}, nil
	}
	b := browser(t)
	_, page := get(t, b, srv.URL+"/console/playground")
	form := url.Values{"csrf": {csrfOf(t, page)}, "rules": {"version: 1\n"}, "channels": {"sms, push sms"}, "now": {"2026-12-07T12:00:00Z"},
		"event":   {`{"event_id": "e1", "user_id": "u1", "type": "view", "occurred_at": "2026-12-07T11:59:00Z"}`},
		"history": {`[{"event_id": "h1", "user_id": "u1", "type": "view", "occurred_at": "2026-12-07T11:00:00Z"}]`}}
	res, body := post(t, b, srv.URL+"/console/playground", form, srv.URL)
	if res.StatusCode != http.StatusOK || !strings.Contains(body, "line 5") || !strings.Contains(body, "syntax error") {
		t.Fatalf("%d\n%s", res.StatusCode, body)
	}
	if got.GetEvent().GetEventId() != "e1" || len(got.GetHistory()) != 1 || strings.Join(got.GetChannels(), ",") != "sms,push" || !got.GetNow().AsTime().Equal(testNow) {
		t.Fatalf("request %v", got)
	}
	got = nil
	form.Set("event", `{"event_id": 1`)
	res, body = post(t, b, srv.URL+"/console/playground", form, srv.URL)
	if res.StatusCode != http.StatusBadRequest || !strings.Contains(body, "Event: not an event") || got != nil {
		t.Fatalf("a broken event: %d, called %v\n%s", res.StatusCode, got != nil, body)
	}
}

// fakeTail hands out actions, then waits for the end of the tail.
type fakeTail struct{ actions []profile.Action }

func (f fakeTail) Tail(ctx context.Context, each func(delivery.TailEntry) error) error {
	for _, a := range f.actions {
		if err := each(delivery.TailEntry{Action: a}); err != nil {
			return err
		}
	}
	<-ctx.Done()
	return nil
}

// The live stream sends the actions of the filter's channel and trigger
// (with its journey's steps) as server-sent events, and ends when the
// console closes (the HTTP server shuts down).
func TestLiveStream(t *testing.T) {
	conn := &fakeConn{handlers: map[string]func(context.Context, proto.Message) (proto.Message, error){}}
	c, err := New(Config{Auth: fakeAuth{open: true}, Conn: conn, Now: func() time.Time { return testNow },
		Actions: fakeTail{actions: []profile.Action{
			{ID: "a1", UserID: "u1", TriggerID: "cart", Channel: "push", Template: "t"},
			{ID: "a2", UserID: "u2", TriggerID: "coupon", Channel: "push", Template: "t"},
			{ID: "a3", UserID: "u3", TriggerID: "cart-email", Channel: "email", Template: "t2"},
			{ID: "a4", UserID: "u4", TriggerID: "cart-email", Channel: "push", Template: "t2"},
		}},
		Campaigns: func() []decision.Campaign {
			return []decision.Campaign{{ID: "cart", Kind: decision.CampaignTrigger}, {ID: "cart-email", Kind: decision.CampaignStep, Journey: "cart"}}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(c)
	defer srv.Close()
	b := browser(t)
	get(t, b, srv.URL+"/console/live") // the session
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/console/live/stream?channel=push&trigger=cart", nil)
	res, err := b.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if ct := res.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type %q", ct)
	}
	var seen []string
	buf := make([]byte, 4096)
	var all strings.Builder
	for len(seen) < 2 {
		n, err := res.Body.Read(buf)
		all.Write(buf[:n])
		seen = regexp.MustCompile(`"id":"(a\d)"`).FindAllString(all.String(), -1)
		if err != nil {
			t.Fatalf("stream ended after %q: %v", all.String(), err)
		}
	}
	if strings.Join(seen, " ") != `"id":"a1" "id":"a4"` {
		t.Fatalf("sent %v, want a1 and a4 (push, the cart trigger and its step)", seen)
	}
	c.Close()
	if _, err := io.ReadAll(res.Body); err != nil {
		t.Fatalf("after Close the stream should end: %v", err)
	}
}
