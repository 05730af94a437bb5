package console

import (
	"bytes"
	"cmp"
	"context"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/nudge-dm/nudge/audit"
	"github.com/nudge-dm/nudge/decision"
	"github.com/nudge-dm/nudge/delivery"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// Prefix is where the console is served.
const Prefix = "/console/"

// The roles that may sign in; the names of server.RoleAdmin and
// server.RoleConsole.
const (
	roleAdmin   = "admin"
	roleConsole = "console"
)

// Auth tells the console about tokens; *server.Server implements it.
type Auth interface {
	// AuthRequired reports whether tokens are configured. Without them
	// every caller may call every method, and the console is open too.
	AuthRequired() bool
	// TokenRoles returns the name and roles of the token whose secret is
	// secret, ok false when no token has it.
	TokenRoles(secret string) (name string, roles []string, ok bool)
}

// ActionTail follows the actions written to the outbox without consuming
// them; *delivery.Outbox implements it.
type ActionTail interface {
	Tail(ctx context.Context, each func(delivery.TailEntry) error) error
}

// DecisionLog reads a user's sampled decisions; *audit.Log implements it.
type DecisionLog interface {
	RecentForUser(ctx context.Context, userID string, scan int64, want int) ([]audit.Record, error)
}

// Config is what the console serves from. Conn is required; the rest may
// be nil, and the pages then say what they cannot show.
type Config struct {
	Auth Auth
	// Conn is a connection to nudged's own gRPC server: the console calls
	// its methods with the session's token.
	Conn    grpc.ClientConnInterface
	Sampler *Sampler
	// Campaigns are the rules' campaigns (decision.Live's rules'): the
	// live page's trigger filter includes a trigger's journey steps.
	Campaigns func() []decision.Campaign
	Actions   ActionTail
	Decisions DecisionLog
	// Version is nudged's, shown in the footer.
	Version string
	// SessionTTL ends a session this long after sign-in (default 12h);
	// IdleTimeout after this long without a request (default 1h).
	SessionTTL  time.Duration
	IdleTimeout time.Duration
	// MaxSessions bounds the sessions kept (default 1,000): past it the
	// least recently seen is signed out.
	MaxSessions int
	// RPCTimeout bounds each call the console makes (default 10s).
	RPCTimeout time.Duration
	Now        func() time.Time
	Log        *slog.Logger
}

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Console serves the pages under Prefix.
type Console struct {
	cfg      Config
	sessions *sessions
	pages    map[string]*template.Template
	mux      *http.ServeMux
	admin    nudgev1.AdminServiceClient
	profiles nudgev1.ProfileServiceClient
	liveOpen atomic.Int64 // live streams open
	throttle *signInThrottle
	closed   context.Context    // done once Close is called: the live streams end
	close    context.CancelFunc // ends closed
}

// Close ends the live streams, which otherwise last as long as their
// browsers stay: call it when the HTTP server shuts down
// (http.Server.RegisterOnShutdown), so that it does not wait for them.
func (c *Console) Close() { c.close() }

// New returns the console, or an error when its templates do not parse
// (a build defect, caught by the tests).
func New(cfg Config) (*Console, error) {
	if cfg.Conn == nil {
		return nil, errors.New("console: Config.Conn is required")
	}
	cfg.SessionTTL = cmp.Or(cfg.SessionTTL, 12*time.Hour)
	cfg.IdleTimeout = cmp.Or(cfg.IdleTimeout, time.Hour)
	cfg.MaxSessions = cmp.Or(cfg.MaxSessions, 1000)
	cfg.RPCTimeout = cmp.Or(cfg.RPCTimeout, 10*time.Second)
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	c := &Console{
		cfg:      cfg,
		sessions: newSessions(cfg.SessionTTL, cfg.IdleTimeout, cfg.MaxSessions, cfg.Now),
		throttle: newSignInThrottle(cfg.Now),

		admin:    nudgev1.NewAdminServiceClient(cfg.Conn),
		profiles: nudgev1.NewProfileServiceClient(cfg.Conn),
	}
	c.closed, c.close = context.WithCancel(context.Background())
	var err error
	if c.pages, err = parsePages(); err != nil {
		return nil, err
	}
	c.routes()
	return c, nil
}

// parsePages parses each page with the layout.
func parsePages() (map[string]*template.Template, error) {
	names, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		return nil, err
	}
	pages := make(map[string]*template.Template)
	for _, n := range names {
		base := strings.TrimSuffix(strings.TrimPrefix(n, "templates/"), ".html")
		if base == "layout" || base == "partials" {
			continue
		}
		t, err := template.New(base).Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/partials.html", n)
		if err != nil {
			return nil, fmt.Errorf("console: template %s: %w", n, err)
		}
		pages[base] = t
	}
	return pages, nil
}

func (c *Console) routes() {
	m := http.NewServeMux()
	static, _ := fs.Sub(staticFS, "static")
	m.Handle("GET /console/static/", http.StripPrefix("/console/static/", staticHandler(http.FileServerFS(static))))
	m.HandleFunc("GET /console/login", c.loginPage)
	m.HandleFunc("POST /console/login", c.login)
	m.HandleFunc("POST /console/logout", c.signedIn(c.logout))
	m.HandleFunc("GET /console/{$}", c.signedIn(c.overview))
	m.HandleFunc("GET /console/overview/charts", c.signedIn(c.overviewCharts))
	m.HandleFunc("GET /console/campaigns", c.signedIn(c.campaigns))
	m.HandleFunc("GET /console/user", c.signedIn(c.user))
	m.HandleFunc("POST /console/user/erase", c.signedIn(c.erase))
	m.HandleFunc("GET /console/playground", c.signedIn(c.playground))
	m.HandleFunc("POST /console/playground", c.signedIn(c.playground))
	m.HandleFunc("GET /console/live", c.signedIn(c.live))
	m.HandleFunc("GET /console/live/stream", c.signedIn(c.liveStream))
	m.HandleFunc("/console/", func(w http.ResponseWriter, r *http.Request) {
		c.fail(w, r, nil, http.StatusNotFound, "No console page at "+r.URL.Path+".")
	})
	c.mux = m
}

// ServeHTTP serves the console's pages, each with the console's security
// headers.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	// No script or style but the console's own files; no frames; forms
	// post only here. SVG charts are markup, not images or styles.
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	// Not no-referrer: with it a browser sends "Origin: null" with every
	// form, and sameOrigin could not tell the console's own from others'.
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
	if r.URL.Path == "/console" {
		http.Redirect(w, r, Prefix, http.StatusFound)
		return
	}
	c.mux.ServeHTTP(w, r)
}

// staticHandler serves the embedded assets, cacheable for a short while
// (they change only with the binary).
func staticHandler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "private, max-age=300")
		next.ServeHTTP(w, r)
	})
}

const (
	sessionCookie = "nudge_console"
	loginCookie   = "nudge_console_login" // the sign-in form's CSRF token
)

// signedIn runs h with the request's session, or sends the browser to
// sign in. A POST must carry the session's CSRF token and come from this
// origin.
func (c *Console) signedIn(h func(http.ResponseWriter, *http.Request, *session)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s := c.session(r)
		if s == nil && !c.authRequired() {
			// Open mode: a session of its own for every browser, with the
			// roles an open server grants every caller.
			s = c.sessions.start("", "", []string{roleAdmin})
			c.setCookie(w, r, sessionCookie, s.id, int(c.cfg.SessionTTL.Seconds()))
		}
		if s == nil {
			if r.Method == http.MethodGet && r.Header.Get("Accept") != "text/event-stream" && !strings.HasPrefix(r.URL.Path, "/console/overview/") {
				http.Redirect(w, r, "/console/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
				return
			}
			c.fail(w, r, nil, http.StatusUnauthorized, "Not signed in, or the session ended: sign in again.")
			return
		}
		if r.Method == http.MethodPost {
			if !sameOrigin(r) || !sameSecret(r.PostFormValue("csrf"), s.csrf) {
				c.fail(w, r, s, http.StatusForbidden, "This form is stale or did not come from this console (CSRF check failed): reload the page and try again.")
				return
			}
		}
		h(w, r, s)
	}
}

// session is the request's live session, or nil.
func (c *Console) session(r *http.Request) *session {
	ck, err := r.Cookie(sessionCookie)
	if err != nil {
		return nil
	}
	return c.sessions.get(ck.Value)
}

func (c *Console) authRequired() bool { return c.cfg.Auth != nil && c.cfg.Auth.AuthRequired() }

// sameOrigin rejects a request another site's page sent. Browsers say
// where a request comes from in Sec-Fetch-Site; older ones only in Origin
// (with Referrer-Policy same-origin, a same-origin POST carries it).
func sameOrigin(r *http.Request) bool {
	switch r.Header.Get("Sec-Fetch-Site") {
	case "same-origin":
		return true
	case "":
	default: // same-site, cross-site, none (typed in: never a POST)
		return false
	}
	o := r.Header.Get("Origin")
	if o == "" {
		return true // not a browser's cross-site POST: it would carry Origin
	}
	u, err := url.Parse(o)
	return err == nil && u.Host == r.Host
}

// setCookie sets one of the console's cookies: HttpOnly, SameSite=Strict,
// under Prefix, Secure over TLS.
func (c *Console) setCookie(w http.ResponseWriter, r *http.Request, name, value string, maxAge int) {
	http.SetCookie(w, &http.Cookie{
		Name: name, Value: value, Path: Prefix, MaxAge: maxAge,
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil,
	})
}

// rpc is a context for a call on the session's behalf: its token and the
// console's timeout.
func (c *Console) rpc(r *http.Request, s *session) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(r.Context(), c.cfg.RPCTimeout)
	if s != nil && s.token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+s.token)
	}
	return ctx, cancel
}

// view is what every page's template gets.
type view struct {
	Title   string
	Nav     string
	Session *session
	Who     string // the session's token name
	Open    bool
	CSRF    string
	Version string
	Now     time.Time
	Data    any
}

// render writes page with data; status 200 unless code says otherwise.
func (c *Console) render(w http.ResponseWriter, r *http.Request, s *session, page, title string, code int, data any) {
	t := c.pages[page]
	v := view{Title: title, Nav: page, Session: s, Open: !c.authRequired(), Version: c.cfg.Version, Now: c.cfg.Now(), Data: data}
	if s != nil {
		v.CSRF, v.Who = s.csrf, s.name
	}
	var buf bytes.Buffer
	if err := t.ExecuteTemplate(&buf, "layout", v); err != nil {
		c.cfg.Log.Error("console: rendering a page failed", "page", page, "err", err)
		http.Error(w, "the console failed to render this page; see nudged's log", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(cmp.Or(code, http.StatusOK))
	_, _ = w.Write(buf.Bytes())
}

// fail renders an error page with a message a person can act on.
func (c *Console) fail(w http.ResponseWriter, r *http.Request, s *session, code int, msg string) {
	c.render(w, r, s, "error", http.StatusText(code), code, msg)
}

// rpcFailure turns an RPC's error into a status and message for a page.
func rpcFailure(what string, err error) (int, string) {
	st := status.Convert(err)
	code := http.StatusBadGateway
	switch st.Code() {
	case codes.Unauthenticated:
		code = http.StatusUnauthorized
	case codes.PermissionDenied:
		code = http.StatusForbidden
	case codes.InvalidArgument, codes.FailedPrecondition:
		code = http.StatusBadRequest
	case codes.NotFound:
		code = http.StatusNotFound
	case codes.Unimplemented:
		code = http.StatusNotImplemented
	case codes.DeadlineExceeded, codes.Unavailable, codes.ResourceExhausted:
		code = http.StatusServiceUnavailable
	}
	return code, fmt.Sprintf("%s: %s (%s)", what, st.Message(), st.Code())
}

// loginPage shows the sign-in form, with a fresh CSRF token in a cookie
// and in the form (double submit: the session does not exist yet).
func (c *Console) loginPage(w http.ResponseWriter, r *http.Request) {
	if !c.authRequired() {
		http.Redirect(w, r, Prefix, http.StatusSeeOther)
		return
	}
	c.loginForm(w, r, http.StatusOK, "")
}

type loginData struct {
	Next  string
	Token string // the form's CSRF token
	Error string // why the last sign-in was refused
}

func (c *Console) loginForm(w http.ResponseWriter, r *http.Request, code int, msg string) {
	tok := randomID()
	c.setCookie(w, r, loginCookie, tok, 600)
	c.render(w, r, nil, "login", "Sign in", code, loginData{Next: safeNext(r.FormValue("next")), Token: tok, Error: msg})
}

// safeNext is where to go after signing in: a console page, nothing else
// (not another site: an open redirect).
func safeNext(next string) string {
	if !strings.HasPrefix(next, Prefix) {
		return Prefix
	}
	return next
}

// login checks the token and starts a session. A wrong token, or one
// without a console role, is refused with a message saying which.
func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	if !c.authRequired() {
		http.Redirect(w, r, Prefix, http.StatusSeeOther)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
	ck, err := r.Cookie(loginCookie)
	if err != nil || !sameOrigin(r) || !sameSecret(r.PostFormValue("csrf"), ck.Value) {
		c.loginForm(w, r, http.StatusForbidden, "The sign-in form expired or did not come from this console: try again.")
		return
	}
	if c.throttle.blocked(r) {
		c.cfg.Log.Warn("console: sign-in refused: too many failures from this address", "remote", r.RemoteAddr)
		c.loginForm(w, r, http.StatusTooManyRequests, fmt.Sprintf("Too many failed sign-ins from this address: wait %v and try again.", signInEvery))
		return
	}
	secret := strings.TrimSpace(r.PostFormValue("token"))
	name, roles, ok := c.cfg.Auth.TokenRoles(secret)
	switch {
	case secret == "":
		c.loginForm(w, r, http.StatusUnauthorized, "Enter a token.")
		return
	case !ok:
		c.throttle.failed(r)
		c.cfg.Log.Warn("console: sign-in refused: unknown token", "remote", r.RemoteAddr)
		c.loginForm(w, r, http.StatusUnauthorized, "Unknown token: no token of this server has that secret.")
		return
	}
	s := &session{roles: roles}
	if !s.may(roleAdmin, roleConsole) {
		c.cfg.Log.Warn("console: sign-in refused: no console role", "token", name, "remote", r.RemoteAddr)
		c.loginForm(w, r, http.StatusForbidden, fmt.Sprintf("Token %q has the roles %s; the console needs admin or console.", name, strings.Join(roles, ", ")))
		return
	}
	s = c.sessions.start(secret, name, roles)
	c.cfg.Log.Info("console: signed in", "token", name, "remote", r.RemoteAddr)
	c.setCookie(w, r, loginCookie, "", -1)
	c.setCookie(w, r, sessionCookie, s.id, int(c.cfg.SessionTTL.Seconds()))
	http.Redirect(w, r, safeNext(r.PostFormValue("next")), http.StatusSeeOther)
}

func (c *Console) logout(w http.ResponseWriter, r *http.Request, s *session) {
	c.sessions.end(s.id)
	c.setCookie(w, r, sessionCookie, "", -1)
	if !c.authRequired() {
		http.Redirect(w, r, Prefix, http.StatusSeeOther)
		return
	}
	http.Redirect(w, r, "/console/login", http.StatusSeeOther)
}
