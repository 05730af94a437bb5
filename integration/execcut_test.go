package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nudge-dm/nudge/internal/redistest"
)

// Scenario 2 of issue 7, made precise: a RESP-aware proxy between nudged
// and Redis withholds chosen EXEC replies. It lets Redis receive the whole
// transaction and answer it, waits until that answer has arrived whole (so
// Redis has applied the transaction, or aborted it on a WATCH), then closes
// both connections instead of forwarding it. nudged sees a connection error
// after EXEC, the nastiest moment: it cannot tell whether its writes are in.
// toxiproxy's limit_data (TestChaosCutRedisReplies) cuts some reply at
// random; this proxy cuts EXEC replies and counts them.

// errRESPIncomplete reports that a RESP value or command continues past the
// bytes received so far.
var errRESPIncomplete = errors.New("resp: incomplete")

const (
	// respMaxDepth bounds the nesting of aggregates the parser follows.
	respMaxDepth = 64
	// respMaxLine bounds a type line (or an inline command) with no CRLF
	// yet: past it the stream is not RESP.
	respMaxLine = 1 << 20
)

// respReply is what the proxy needs to know of one reply.
type respReply struct {
	// kind is the type byte of the value (after any attribute): one of
	// + - : $ * (RESP2) and _ , # ( ! = % ~ > (RESP3).
	kind byte
	// null is RESP2's null bulk string or array ($-1, *-1) or RESP3's _.
	null bool
}

// parseRESP parses the RESP2 or RESP3 value at the start of b, an
// attribute (|) and the value it annotates counting as one, and returns its
// length in bytes. It returns errRESPIncomplete when b ends inside the
// value, and another error when b is not RESP (streamed strings and
// aggregates, $? and *?, are not supported: Redis never sends them).
func parseRESP(b []byte) (int, respReply, error) { return parseRESPDepth(b, 0) }

func parseRESPDepth(b []byte, depth int) (int, respReply, error) {
	if depth > respMaxDepth {
		return 0, respReply{}, fmt.Errorf("resp: aggregates nested deeper than %d", respMaxDepth)
	}
	line, n, err := respLine(b)
	if err != nil {
		return 0, respReply{}, err
	}
	kind := b[0]
	switch kind {
	case '+', '-', ':', ',', '(':
		return n, respReply{kind: kind}, nil
	case '_':
		if len(line) != 0 {
			return 0, respReply{}, fmt.Errorf("resp: null with a payload %q", line)
		}
		return n, respReply{kind: kind, null: true}, nil
	case '#':
		if string(line) != "t" && string(line) != "f" {
			return 0, respReply{}, fmt.Errorf("resp: boolean %q", line)
		}
		return n, respReply{kind: kind}, nil
	case '$', '!', '=':
		size, err := respLength(kind, line)
		if err != nil {
			return 0, respReply{}, err
		}
		if size < 0 {
			return n, respReply{kind: kind, null: true}, nil
		}
		end := n + size + 2
		if len(b) < end {
			return 0, respReply{}, errRESPIncomplete
		}
		if b[end-2] != '\r' || b[end-1] != '\n' {
			return 0, respReply{}, fmt.Errorf("resp: %c string of %d bytes not followed by CRLF", kind, size)
		}
		return end, respReply{kind: kind}, nil
	case '*', '~', '>', '%', '|':
		count, err := respLength(kind, line)
		if err != nil {
			return 0, respReply{}, err
		}
		if count < 0 {
			return n, respReply{kind: kind, null: true}, nil
		}
		if kind == '%' || kind == '|' {
			count *= 2 // key-value pairs
		}
		off := n
		for range count {
			m, _, err := parseRESPDepth(b[off:], depth+1)
			if err != nil {
				return 0, respReply{}, err
			}
			off += m
		}
		if kind != '|' {
			return off, respReply{kind: kind}, nil
		}
		// An attribute annotates the value that follows it: together they
		// are one reply.
		m, v, err := parseRESPDepth(b[off:], depth+1)
		if err != nil {
			return 0, respReply{}, err
		}
		return off + m, v, nil
	default:
		return 0, respReply{}, fmt.Errorf("resp: unknown type byte %q", kind)
	}
}

// respLine returns the first line of b without its type byte and CRLF, and
// the length of the line with them.
func respLine(b []byte) ([]byte, int, error) {
	if len(b) == 0 {
		return nil, 0, errRESPIncomplete
	}
	i := bytes.Index(b, []byte("\r\n"))
	if i < 0 {
		if len(b) > respMaxLine {
			return nil, 0, fmt.Errorf("resp: no CRLF in %d bytes", len(b))
		}
		return nil, 0, errRESPIncomplete
	}
	return b[1:i], i + 2, nil
}

// respLength parses the length of a string or the count of an aggregate;
// -1 (null) is allowed for RESP2's $ and * only.
func respLength(kind byte, line []byte) (int, error) {
	v, err := strconv.ParseInt(string(line), 10, 32)
	switch {
	case err != nil:
		return 0, fmt.Errorf("resp: %c length %q (streamed values are not supported): %w", kind, line, err)
	case v == -1 && (kind == '$' || kind == '*'):
		return -1, nil
	case v < 0:
		return 0, fmt.Errorf("resp: %c length %d", kind, v)
	}
	return int(v), nil
}

// respCommand is what the proxy needs to know of one command.
type respCommand struct {
	// name is the command's name, upper-cased; "" for an empty command
	// (*0, *-1 or a blank inline line), which Redis ignores without a
	// reply.
	name string
	// sub is the second argument, upper-cased, when it is at most 16
	// bytes (a subcommand such as CLIENT REPLY).
	sub string
}

// parseCommand parses the command at the start of b: an array of bulk
// strings, as clients send, or an inline command (a line of words, as
// typed into telnet). It returns errRESPIncomplete when b ends inside it.
func parseCommand(b []byte) (int, respCommand, error) {
	if len(b) == 0 {
		return 0, respCommand{}, errRESPIncomplete
	}
	if b[0] != '*' {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			if len(b) > respMaxLine {
				return 0, respCommand{}, fmt.Errorf("resp: inline command without a newline in %d bytes", len(b))
			}
			return 0, respCommand{}, errRESPIncomplete
		}
		words := strings.Fields(string(b[:i]))
		var cmd respCommand
		if len(words) > 0 {
			cmd.name = strings.ToUpper(words[0])
		}
		if len(words) > 1 && len(words[1]) <= 16 {
			cmd.sub = strings.ToUpper(words[1])
		}
		return i + 1, cmd, nil
	}
	line, n, err := respLine(b)
	if err != nil {
		return 0, respCommand{}, err
	}
	count, err := strconv.ParseInt(string(line), 10, 32)
	if err != nil {
		return 0, respCommand{}, fmt.Errorf("resp: command length %q: %w", line, err)
	}
	var cmd respCommand
	off := n
	for i := range int(count) { // a count of 0 or less is an empty command
		if len(b) <= off {
			return 0, respCommand{}, errRESPIncomplete
		}
		if b[off] != '$' {
			return 0, respCommand{}, fmt.Errorf("resp: command argument %d is %q, not a bulk string", i, b[off])
		}
		line, h, err := respLine(b[off:])
		if err != nil {
			return 0, respCommand{}, err
		}
		size, err := respLength('$', line)
		if err != nil {
			return 0, respCommand{}, err
		}
		if size < 0 {
			return 0, respCommand{}, fmt.Errorf("resp: command argument %d is null", i)
		}
		end := off + h + size + 2
		if len(b) < end {
			return 0, respCommand{}, errRESPIncomplete
		}
		if b[end-2] != '\r' || b[end-1] != '\n' {
			return 0, respCommand{}, fmt.Errorf("resp: command argument %d of %d bytes not followed by CRLF", i, size)
		}
		arg := b[off+h : end-2]
		switch {
		case i == 0:
			cmd.name = strings.ToUpper(string(arg))
		case i == 1 && len(arg) <= 16:
			cmd.sub = strings.ToUpper(string(arg))
		}
		off = end
	}
	return off, cmd, nil
}

// execOutcome is what Redis did with a transaction, read from its EXEC
// reply.
type execOutcome int

const (
	// execApplied: an array, one reply per queued command; the
	// transaction's writes are in.
	execApplied execOutcome = iota
	// execAborted: a null array (*-1 or _); a WATCHed key changed and
	// nothing was written.
	execAborted
	// execRefused: an error (EXECABORT after a queueing error); nothing was
	// written.
	execRefused
)

func execOutcomeOf(v respReply) (execOutcome, error) {
	switch {
	case v.null && (v.kind == '*' || v.kind == '_'):
		return execAborted, nil
	case v.kind == '*':
		return execApplied, nil
	case v.kind == '-' || v.kind == '!':
		return execRefused, nil
	}
	return 0, fmt.Errorf("resp: EXEC answered with a %q value", v.kind)
}

// expect is what a command sent waits for.
type expect int

const (
	expectReply expect = iota // one reply
	expectExec                // one reply, to EXEC
	expectNone                // no reply (an empty command)
	// expectRelay: one reply, after which replies are no longer matched to
	// commands (SUBSCRIBE and the like answer with pushes; MONITOR streams).
	expectRelay
)

// execMatcher follows one proxied connection: it parses the commands the
// client sends and the replies Redis sends back, and matches them in
// order. fromClient and fromServer are each called by one goroutine (one
// per direction); the queue between them is locked.
type execMatcher struct {
	cmdBuf, replyBuf []byte
	clientRelay      bool // fromClient met a command after which replies are not matched
	serverRelay      bool // fromServer reached its reply

	mu    sync.Mutex
	queue []expect // commands sent and not yet answered, oldest first
}

// fromClient takes the next bytes the client sent and records the commands
// they complete. The caller forwards b to Redis only after this returns:
// so a reply never arrives before its command is recorded.
func (m *execMatcher) fromClient(b []byte) error {
	if m.clientRelay {
		return nil
	}
	m.cmdBuf = append(m.cmdBuf, b...)
	off := 0
	defer func() { m.cmdBuf = m.cmdBuf[:copy(m.cmdBuf, m.cmdBuf[off:])] }()
	for off < len(m.cmdBuf) {
		n, cmd, err := parseCommand(m.cmdBuf[off:])
		if errors.Is(err, errRESPIncomplete) {
			return nil
		}
		if err != nil {
			return err
		}
		off += n
		e := expectReply
		switch cmd.name {
		case "":
			e = expectNone
		case "EXEC":
			e = expectExec
		case "SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "MONITOR":
			e = expectRelay
		case "CLIENT":
			if cmd.sub == "REPLY" {
				return errors.New("resp: CLIENT REPLY is not supported: replies could not be matched to commands")
			}
		}
		if e == expectNone {
			continue
		}
		m.mu.Lock()
		m.queue = append(m.queue, e)
		m.mu.Unlock()
		if e == expectRelay {
			m.clientRelay = true
			off = len(m.cmdBuf)
			return nil
		}
	}
	return nil
}

// fromServer takes the next bytes Redis sent and returns those to forward
// to the client now: every complete reply (and push message) in order,
// holding back a reply still incomplete. When it completes the reply to an
// EXEC, it asks cut with what Redis did; if cut says so, it returns the
// replies before that one and cutNow: the caller forwards them and closes
// both connections, and the EXEC reply is never forwarded.
func (m *execMatcher) fromServer(b []byte, cut func(execOutcome) bool) (forward []byte, cutNow bool, err error) {
	if m.serverRelay {
		return b, false, nil
	}
	m.replyBuf = append(m.replyBuf, b...)
	off := 0
	defer func() {
		forward = append([]byte(nil), m.replyBuf[:off]...)
		m.replyBuf = m.replyBuf[:copy(m.replyBuf, m.replyBuf[off:])]
	}()
	for off < len(m.replyBuf) {
		n, v, err := parseRESP(m.replyBuf[off:])
		if errors.Is(err, errRESPIncomplete) {
			return nil, false, nil
		}
		if err != nil {
			return nil, false, err
		}
		if v.kind == '>' { // a push message answers no command
			off += n
			continue
		}
		m.mu.Lock()
		if len(m.queue) == 0 {
			m.mu.Unlock()
			return nil, false, fmt.Errorf("resp: a %q reply with no command waiting for it", v.kind)
		}
		e := m.queue[0]
		m.queue = m.queue[1:]
		m.mu.Unlock()
		switch e {
		case expectExec:
			o, err := execOutcomeOf(v)
			if err != nil {
				return nil, false, err
			}
			if cut(o) {
				return nil, true, nil
			}
		case expectRelay:
			m.serverRelay = true
			off = len(m.replyBuf)
			return nil, false, nil
		}
		off += n
	}
	return nil, false, nil
}

// execCutStats are an execCutter's counters.
type execCutStats struct {
	Execs      int // EXEC replies received from Redis
	CutApplied int // withheld after Redis applied the transaction
	CutAborted int // withheld after a WATCH aborted it
	CutRefused int // withheld after Redis refused it (EXECABORT)
}

// execCutter chooses the EXEC replies to withhold: the every-th, 2×every-th
// ... EXEC reply the proxy receives (over all its connections), until
// target applied transactions were cut. Safe for concurrent use.
type execCutter struct {
	every, target int

	mu    sync.Mutex
	stats execCutStats
}

func (c *execCutter) cut(o execOutcome) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stats.Execs++
	if c.every <= 0 || c.stats.CutApplied >= c.target || c.stats.Execs%c.every != 0 {
		return false
	}
	switch o {
	case execApplied:
		c.stats.CutApplied++
	case execAborted:
		c.stats.CutAborted++
	case execRefused:
		c.stats.CutRefused++
	}
	return true
}

func (c *execCutter) Stats() execCutStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats
}

// execCutProxy is a TCP proxy on loopback in front of one Redis that
// relays both directions and withholds the EXEC replies its cutter picks.
type execCutProxy struct {
	addr     string
	upstream string
	cutter   *execCutter
	ln       net.Listener
	wg       sync.WaitGroup

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	errs   []error
	closed bool
}

// startExecCutProxy starts the proxy on a free loopback port, stopped when
// the test ends; a protocol error (a stream the proxy cannot follow) fails
// the test then.
func startExecCutProxy(t *testing.T, upstream string, cutter *execCutter) *execCutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &execCutProxy{addr: ln.Addr().String(), upstream: upstream, cutter: cutter, ln: ln, conns: map[net.Conn]struct{}{}}
	p.wg.Go(p.accept)
	t.Cleanup(func() {
		for _, err := range p.Close() {
			t.Errorf("EXEC-cutting proxy: %v", err)
		}
	})
	return p
}

// Close stops accepting, closes every connection, waits for the relays to
// end, and returns the protocol errors met.
func (p *execCutProxy) Close() []error {
	p.mu.Lock()
	p.closed = true
	_ = p.ln.Close()
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.errs
}

func (p *execCutProxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		p.wg.Go(func() { p.relay(c) })
	}
}

// track registers conns to be closed by Close; false if it already ran.
func (p *execCutProxy) track(conns ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	for _, c := range conns {
		p.conns[c] = struct{}{}
	}
	return true
}

func (p *execCutProxy) untrack(conns ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range conns {
		delete(p.conns, c)
	}
}

func (p *execCutProxy) fail(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.errs = append(p.errs, err)
}

// relay serves one client connection until either side closes it or a cut
// closes both.
func (p *execCutProxy) relay(client net.Conn) {
	server, err := net.DialTimeout("tcp", p.upstream, 5*time.Second)
	if err != nil {
		_ = client.Close() // what the client would see of a Redis that is down
		return
	}
	closeBoth := sync.OnceFunc(func() {
		_ = client.Close()
		_ = server.Close()
	})
	defer closeBoth()
	if !p.track(client, server) {
		return
	}
	defer p.untrack(client, server)
	m := &execMatcher{}
	var wg sync.WaitGroup
	wg.Go(func() {
		defer closeBoth()
		buf := make([]byte, 32<<10)
		for {
			n, err := client.Read(buf)
			if n > 0 {
				if perr := m.fromClient(buf[:n]); perr != nil {
					p.fail(fmt.Errorf("from the client: %w", perr))
					return
				}
				if _, werr := server.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	})
	wg.Go(func() {
		defer closeBoth()
		buf := make([]byte, 32<<10)
		for {
			n, err := server.Read(buf)
			if n > 0 {
				fwd, cutNow, perr := m.fromServer(buf[:n], p.cutter.cut)
				if perr != nil {
					p.fail(fmt.Errorf("from Redis: %w", perr))
					return
				}
				if len(fwd) > 0 {
					if _, werr := client.Write(fwd); werr != nil {
						return
					}
				}
				if cutNow {
					return // closeBoth: the EXEC reply is dropped
				}
			}
			if err != nil {
				if !errors.Is(err, io.EOF) {
					return
				}
				// Redis closed: hand over what it sent, whole or not.
				if rest := m.replyBuf; len(rest) > 0 {
					_, _ = client.Write(rest)
				}
				return
			}
		}
	})
	wg.Wait()
}

// Scenario 2: the proxy withholds EXEC replies, every every-th one, after
// Redis applied (or aborted) the transaction, until cuts applied ones were
// withheld; nudged's store sees a connection error after EXEC and retries,
// the retry finds the events already in the profile and reports them as
// duplicates. Counts stay exact: no acknowledged event lost, none counted
// twice, no action written twice.
func TestChaosCutEXECReplies(t *testing.T) {
	// A transaction commits about 50 to 70 events (500-event batches,
	// groups of up to 64 users, more while cut transactions are retried):
	// 30,000 events made 430 to 540 EXECs, and every third reply makes the
	// 100 cuts; 300,000 made about 6,100, and every fifth the 1,000.
	events, users, cuts := chaosSize(30_000, 300_000), chaosSize(1_500, 10_000), chaosSize(100, 1_000)
	every := chaosSize(3, 5)
	// every spaces the cuts over the stream; a stream that ends before the
	// target (if transactions commit more events than that) is followed by
	// another one over new users, at most rounds in all.
	const rounds = 3
	rs := redistest.Start(t, "--appendonly", "yes", "--appendfsync", "everysec")
	cutter := &execCutter{every: every, target: cuts}
	proxy := startExecCutProxy(t, rs.Addr, cutter)
	n := startNudged(t, buildNudged(t), "--redis-addr", proxy.addr, "--metrics-listen", "127.0.0.1:0")
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	led := newLedger()
	prod := newChaosProducer(t, []string{n.addr}, 4, 500, led)

	sent, spread, streamed := 0, 0, 0
	for streamed < rounds && cutter.Stats().CutApplied < cuts && !t.Failed() {
		streamed++
		tag := "e"
		if streamed > 1 {
			tag = "e" + strconv.Itoa(streamed)
		}
		<-prod.start(ctx, t, tag, events, users)
		sent, spread = sent+events, spread+users
	}
	st, cs := prod.stats(), cutter.Stats()
	retries := metricValue(t, httpGet(t, n.metrics), "nudge_store_error_retries_total")
	t.Logf("%d events over %d users in %d round(s) of %d, %d EXEC replies cut after Redis applied them (%d more after an aborted EXEC, %d after a refused one; 1 in %d of %d EXEC replies): publisher %+v; store error retries %v",
		sent, spread, streamed, events, cs.CutApplied, cs.CutAborted, cs.CutRefused, every, cs.Execs, st, retries)
	if cs.CutApplied < cuts {
		t.Errorf("%d applied EXEC replies cut in %d events, want %d", cs.CutApplied, sent, cuts)
	}
	if st.Failed != 0 {
		t.Errorf("publisher stats %+v: want no failure", st)
	}
	wantExact(t, led.check(ctx, t, rs.Client(t)))
}

// helloReply is Redis 7's answer to HELLO 3.
const helloReply = "%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$6\r\n7.0.15\r\n$5\r\nproto\r\n:3\r\n$2\r\nid\r\n:5\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n"

// respCases are replies in every RESP2 and RESP3 type, with the kind and
// nullness parseRESP must see.
var respCases = []struct {
	name string
	in   string
	kind byte
	null bool
}{
	{"simple string", "+OK\r\n", '+', false},
	{"error", "-ERR unknown command 'x'\r\n", '-', false},
	{"integer", ":-42\r\n", ':', false},
	{"bulk string", "$5\r\nhello\r\n", '$', false},
	{"bulk string holding CRLFs", "$6\r\n\r\n$1\r\n\r\n", '$', false},
	{"empty bulk string", "$0\r\n\r\n", '$', false},
	{"RESP2 null bulk string", "$-1\r\n", '$', true},
	{"RESP2 null array", "*-1\r\n", '*', true},
	{"empty array", "*0\r\n", '*', false},
	{"nested arrays", "*3\r\n*2\r\n:1\r\n$1\r\na\r\n*1\r\n*0\r\n$-1\r\n", '*', false},
	{"EXEC applied", "*3\r\n+OK\r\n$10\r\n1-0000000A\r\n-ERR wrong type\r\n", '*', false},
	{"RESP3 null", "_\r\n", '_', true},
	{"double", ",-1.5e3\r\n", ',', false},
	{"boolean", "#f\r\n", '#', false},
	{"big number", "(3492890328409238509324850943850943825024385\r\n", '(', false},
	{"blob error", "!21\r\nSYNTAX invalid syntax\r\n", '!', false},
	{"verbatim string", "=15\r\ntxt:Some string\r\n", '=', false},
	{"map", "%2\r\n+first\r\n:1\r\n$6\r\nsecond\r\n*2\r\n:2\r\n_\r\n", '%', false},
	{"set", "~3\r\n+a\r\n:1\r\n#t\r\n", '~', false},
	{"push", ">2\r\n$10\r\ninvalidate\r\n*1\r\n$3\r\nfoo\r\n", '>', false},
	{"HELLO 3 reply", helloReply, '%', false},
	{"attribute before an array", "|1\r\n+key-popularity\r\n%2\r\n$1\r\na\r\n,0.1923\r\n$1\r\nb\r\n,0.0012\r\n*2\r\n:2039123\r\n:9543892\r\n", '*', false},
	{"attribute before a null", "|1\r\n+ttl\r\n:3\r\n_\r\n", '_', true},
	{"attribute inside an array", "*2\r\n|1\r\n+ttl\r\n:3600\r\n:1\r\n:2\r\n", '*', false},
}

// Every reply parses whole, to its exact length, and every proper prefix
// of it is incomplete (never an error, never a shorter value).
func TestParseRESPRepliesAtEveryByteBoundary(t *testing.T) {
	for _, c := range respCases {
		t.Run(c.name, func(t *testing.T) {
			n, v, err := parseRESP([]byte(c.in + "+NEXT\r\n"))
			if err != nil || n != len(c.in) || v.kind != c.kind || v.null != c.null {
				t.Fatalf("parseRESP = %d, {%q null %v}, %v; want %d, {%q null %v}", n, v.kind, v.null, err, len(c.in), c.kind, c.null)
			}
			for k := range len(c.in) {
				if n, _, err := parseRESP([]byte(c.in[:k])); !errors.Is(err, errRESPIncomplete) {
					t.Fatalf("parseRESP(first %d of %d bytes) = %d, %v; want incomplete", k, len(c.in), n, err)
				}
			}
		})
	}
}

// What is not RESP fails loudly, never waits for more bytes.
func TestParseRESPRejectsMalformed(t *testing.T) {
	for _, c := range []struct{ name, in string }{
		{"unknown type", "?x\r\n"},
		{"streamed string", "$?\r\n;4\r\nHell\r\n;0\r\n"},
		{"streamed array", "*?\r\n:1\r\n.\r\n"},
		{"bulk too long for its length", "$3\r\nabcd\r\n"},
		{"negative length", "$-2\r\n"},
		{"null map", "%-1\r\n"},
		{"bad boolean", "#x\r\n"},
		{"null with payload", "_x\r\n"},
		{"bad element", "*2\r\n:1\r\n?\r\n"},
		{"too deep", strings.Repeat("*1\r\n", respMaxDepth+2) + ":1\r\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if _, _, err := parseRESP([]byte(c.in)); err == nil || errors.Is(err, errRESPIncomplete) {
				t.Fatalf("parseRESP(%q) = %v; want a protocol error", c.in, err)
			}
		})
	}
}

// Commands, as arrays of bulk strings or inline, pipelined in one stream,
// parse in order whatever the split.
func TestParseCommandsPipelinedAtEveryByteBoundary(t *testing.T) {
	stream := "*2\r\n$5\r\nWATCH\r\n$9\r\nnudge:p:1\r\n" +
		"*1\r\n$5\r\nmulti\r\n" +
		"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\n\r\n\r\n\r\n" +
		"*0\r\n" +
		"ping\r\n" +
		"\r\n" +
		"client   setinfo lib-name x\n" +
		"*1\r\n$4\r\nEXEC\r\n"
	want := []respCommand{{"WATCH", "NUDGE:P:1"}, {"MULTI", ""}, {"SET", "K"}, {}, {"PING", ""}, {}, {"CLIENT", "SETINFO"}, {"EXEC", ""}}
	parseAll := func(chunks ...string) ([]respCommand, error) {
		var got []respCommand
		var buf []byte
		for _, ch := range chunks {
			buf = append(buf, ch...)
			for {
				n, cmd, err := parseCommand(buf)
				if errors.Is(err, errRESPIncomplete) {
					break
				}
				if err != nil {
					return got, err
				}
				got = append(got, cmd)
				buf = buf[n:]
			}
		}
		if len(buf) != 0 {
			return got, fmt.Errorf("%d bytes left", len(buf))
		}
		return got, nil
	}
	for k := range len(stream) + 1 {
		got, err := parseAll(stream[:k], stream[k:])
		if err != nil || fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("split at %d: %v, %v; want %v", k, got, err, want)
		}
	}
	bytewise := make([]string, len(stream))
	for i := range stream {
		bytewise[i] = stream[i : i+1]
	}
	if got, err := parseAll(bytewise...); err != nil || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("byte by byte: %v, %v; want %v", got, err, want)
	}
	for _, bad := range []string{"*1\r\n:1\r\n", "*1\r\n$-1\r\n", "*x\r\n", "*1\r\n$3\r\nabcd\r\n"} {
		if _, _, err := parseCommand([]byte(bad)); err == nil || errors.Is(err, errRESPIncomplete) {
			t.Errorf("parseCommand(%q) = %v; want a protocol error", bad, err)
		}
	}
}

// conversation is one connection's traffic as go-redis (RESP3) and nudge's
// store make it: the handshake, a WATCH, a read, a MULTI/EXEC, a push
// message and an attribute along the way, then a command after the EXEC.
// execAt is the offset of the EXEC reply in server.
var conversation = func() (client, server string, execAt int) {
	client = "*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n*4\r\n$6\r\nCLIENT\r\n$7\r\nSETINFO\r\n$8\r\nLIB-NAME\r\n$8\r\ngo-redis\r\n" +
		"*2\r\n$5\r\nWATCH\r\n$1\r\nk\r\n" +
		"*2\r\n$4\r\nMGET\r\n$1\r\nk\r\n" +
		"*1\r\n$5\r\nMULTI\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n*5\r\n$4\r\nXADD\r\n$1\r\no\r\n$1\r\n*\r\n$1\r\na\r\n$1\r\n1\r\n*1\r\n$4\r\nEXEC\r\n"
	server = helloReply +
		"-ERR unknown subcommand 'SETINFO'\r\n" +
		"+OK\r\n" + // WATCH
		">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nz\r\n" + // a push between replies
		"*1\r\n_\r\n" + // MGET
		"+OK\r\n+QUEUED\r\n|1\r\n+hint\r\n:1\r\n+QUEUED\r\n" // MULTI, SET, XADD
	execAt = len(server)
	server += "*2\r\n+OK\r\n$15\r\n1700000000000-0\r\n" // EXEC
	return client, server, execAt
}

// feedServer gives the matcher server's bytes in the chunks the offsets
// split them into, and returns what it forwarded and whether it cut.
func feedServer(m *execMatcher, server string, cut func(execOutcome) bool, splits ...int) (string, bool, error) {
	var fwd []byte
	from := 0
	for _, to := range append(splits, len(server)) {
		f, cutNow, err := m.fromServer([]byte(server[from:to]), cut)
		fwd = append(fwd, f...)
		if err != nil || cutNow {
			return string(fwd), cutNow, err
		}
		from = to
	}
	return string(fwd), false, nil
}

// The matcher forwards every reply before the EXEC reply and withholds the
// EXEC reply once it is complete, wherever the server's bytes are split;
// without a cut it forwards the stream unchanged.
func TestExecMatcherCutsTheEXECReply(t *testing.T) {
	client, server, execAt := conversation()
	for k := range len(server) + 1 {
		for _, cutIt := range []bool{true, false} {
			m := &execMatcher{}
			at := min(k, len(client)) // the commands split too
			if err := m.fromClient([]byte(client[:at])); err != nil {
				t.Fatal(err)
			}
			if err := m.fromClient([]byte(client[at:])); err != nil {
				t.Fatal(err)
			}
			var seen []execOutcome
			cut := func(o execOutcome) bool { seen = append(seen, o); return cutIt }
			fwd, cutNow, err := feedServer(m, server, cut, k)
			switch {
			case err != nil:
				t.Fatalf("split at %d: %v", k, err)
			case len(seen) != 1 || seen[0] != execApplied:
				t.Fatalf("split at %d: cut asked with %v; want once, applied", k, seen)
			case cutIt && (!cutNow || fwd != server[:execAt]):
				t.Fatalf("split at %d: cut %v, forwarded %q; want a cut after %q", k, cutNow, fwd, server[:execAt])
			case !cutIt && (cutNow || fwd != server):
				t.Fatalf("split at %d: cut %v, forwarded %q; want everything", k, cutNow, fwd)
			}
		}
	}
}

// Pipelined transactions on one connection: the cut falls on the EXEC it
// was asked for, not on another reply, and byte by byte too.
func TestExecMatcherPipelinedTransactions(t *testing.T) {
	multi := "*1\r\n$5\r\nMULTI\r\n*2\r\n$4\r\nINCR\r\n$1\r\nk\r\n*1\r\n$4\r\nEXEC\r\n"
	m := &execMatcher{}
	if err := m.fromClient([]byte(multi + multi + multi + "*1\r\n$4\r\nPING\r\n")); err != nil {
		t.Fatal(err)
	}
	server := "+OK\r\n+QUEUED\r\n*1\r\n:1\r\n" + "+OK\r\n+QUEUED\r\n*-1\r\n" + "+OK\r\n+QUEUED\r\n*1\r\n:2\r\n" + "+PONG\r\n"
	var splits []int
	for i := 1; i < len(server); i++ {
		splits = append(splits, i)
	}
	var seen []execOutcome
	cut := func(o execOutcome) bool { seen = append(seen, o); return o == execAborted }
	fwd, cutNow, err := feedServer(m, server, cut, splits...)
	if err != nil || !cutNow || fwd != "+OK\r\n+QUEUED\r\n*1\r\n:1\r\n+OK\r\n+QUEUED\r\n" || fmt.Sprint(seen) != fmt.Sprint([]execOutcome{execApplied, execAborted}) {
		t.Fatalf("forwarded %q, cut %v, outcomes %v, %v; want a cut at the second (aborted) EXEC", fwd, cutNow, seen, err)
	}
}

// Each EXEC reply tells what Redis did; anything else answering EXEC, and a
// reply nobody asked for, are protocol errors.
func TestExecMatcherOutcomesAndErrors(t *testing.T) {
	for _, c := range []struct {
		name, reply string
		want        execOutcome
		wantErr     bool
	}{
		{"applied", "*2\r\n+OK\r\n:1\r\n", execApplied, false},
		{"applied, empty", "*0\r\n", execApplied, false},
		{"WATCH aborted, RESP2", "*-1\r\n", execAborted, false},
		{"WATCH aborted, RESP3", "_\r\n", execAborted, false},
		{"refused", "-EXECABORT Transaction discarded because of previous errors.\r\n", execRefused, false},
		{"not an EXEC reply", ":1\r\n", 0, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := &execMatcher{}
			if err := m.fromClient([]byte("*1\r\n$4\r\nEXEC\r\n")); err != nil {
				t.Fatal(err)
			}
			var got []execOutcome
			_, _, err := feedServer(m, c.reply, func(o execOutcome) bool { got = append(got, o); return false })
			if c.wantErr != (err != nil) || (!c.wantErr && fmt.Sprint(got) != fmt.Sprint([]execOutcome{c.want})) {
				t.Fatalf("outcomes %v, %v; want %v (error %v)", got, err, c.want, c.wantErr)
			}
		})
	}
	m := &execMatcher{}
	if _, _, err := feedServer(m, "+OK\r\n", nil); err == nil {
		t.Error("a reply with no command waiting: no error")
	}
	if err := (&execMatcher{}).fromClient([]byte("*3\r\n$6\r\nclient\r\n$5\r\nreply\r\n$3\r\nOFF\r\n")); err == nil {
		t.Error("CLIENT REPLY OFF: no error, yet replies could no longer be matched")
	}
}

// After SUBSCRIBE (answered with pushes in RESP3) the connection is relayed
// unmatched, and nothing on it is cut.
func TestExecMatcherRelaysAfterSubscribe(t *testing.T) {
	m := &execMatcher{}
	if err := m.fromClient([]byte("*1\r\n$4\r\nPING\r\n*2\r\n$9\r\nSUBSCRIBE\r\n$2\r\nch\r\n*1\r\n$4\r\nEXEC\r\n")); err != nil {
		t.Fatal(err)
	}
	server := "+PONG\r\n*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n-ERR EXEC without MULTI\r\n"
	fwd, cutNow, err := feedServer(m, server, func(execOutcome) bool { return true }, 3, 20, 60)
	if err != nil || cutNow || fwd != server {
		t.Fatalf("forwarded %q, cut %v, %v; want everything relayed", fwd, cutNow, err)
	}
}

// The cutter cuts every every-th EXEC reply until target applied ones.
func TestExecCutterPacesAndStops(t *testing.T) {
	c := &execCutter{every: 2, target: 2}
	var got []bool
	for _, o := range []execOutcome{execApplied, execAborted, execApplied, execApplied, execApplied, execRefused, execApplied, execApplied, execApplied, execApplied} {
		got = append(got, c.cut(o))
	}
	want := []bool{false, true, false, true, false, true, false, true, false, false}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("cuts %v, want %v", got, want)
	}
	if s := c.Stats(); s != (execCutStats{Execs: 10, CutApplied: 2, CutAborted: 1, CutRefused: 1}) {
		t.Errorf("stats %+v", s)
	}
}

// The proxy against a real Redis, with go-redis speaking RESP2 and RESP3:
// a cut EXEC reply reaches the client as a connection error (not
// redis.TxFailedErr) while Redis applied the transaction, or aborted it
// when a WATCHed key changed; the cutter tells which.
func TestExecCutProxyAgainstRedis(t *testing.T) {
	rs := redistest.Start(t)
	direct := rs.Client(t)
	for _, proto := range []int{2, 3} {
		t.Run(fmt.Sprintf("RESP%d", proto), func(t *testing.T) {
			ctx := ctxT(t)
			key := fmt.Sprintf("execcut-%d", proto)
			// Cut every EXEC reply until one applied transaction was cut.
			cutter := &execCutter{every: 1, target: 1}
			proxy := startExecCutProxy(t, rs.Addr, cutter)
			rdb := redis.NewClient(&redis.Options{Addr: proxy.addr, Protocol: proto, MaxRetries: -1})
			t.Cleanup(func() { _ = rdb.Close() })
			incr := func(meddle bool) error {
				return rdb.Watch(ctx, func(tx *redis.Tx) error {
					if err := tx.Get(ctx, key).Err(); err != nil && !errors.Is(err, redis.Nil) {
						return err
					}
					if meddle { // another writer, between WATCH and EXEC
						if err := direct.Incr(ctx, key).Err(); err != nil {
							return err
						}
					}
					_, err := tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
						p.Incr(ctx, key)
						return nil
					})
					return err
				}, key)
			}
			// Aborted by the meddler's write: the reply (a null array) is cut.
			if err := incr(true); err == nil || errors.Is(err, redis.TxFailedErr) {
				t.Fatalf("EXEC after a meddler, reply cut: %v; want a connection error", err)
			}
			// Applied: the reply is cut, the increment is in.
			if err := incr(false); err == nil || errors.Is(err, redis.TxFailedErr) {
				t.Fatalf("EXEC reply cut: %v; want a connection error", err)
			}
			// Target reached: no more cuts.
			if err := incr(false); err != nil {
				t.Fatalf("EXEC after the cuts: %v", err)
			}
			if got, err := direct.Get(ctx, key).Int(); err != nil || got != 3 {
				t.Errorf("%s = %d, %v; want 3 (the meddler's, the cut transaction's, the last one's)", key, got, err)
			}
			if s := cutter.Stats(); s != (execCutStats{Execs: 3, CutApplied: 1, CutAborted: 1}) {
				t.Errorf("cutter %+v; want 3 EXECs, 1 applied and 1 aborted cut", s)
			}
		})
	}
}
