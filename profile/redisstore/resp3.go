package redisstore

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
)

// respConn is the little of RESP3 that a tracking connection speaks:
// commands out, replies and push messages in. go-redis gives no raw access
// to a connection's push messages in the order they arrive with its
// replies, which is what the near-cache's heartbeat relies on (see
// nearcache.go, rule 1), so tracking.go reads them here.
type respConn struct {
	c net.Conn
	r *bufio.Reader
	w *bufio.Writer
}

func newRESPConn(c net.Conn) *respConn {
	return &respConn{c: c, r: bufio.NewReaderSize(c, 16<<10), w: bufio.NewWriterSize(c, 4<<10)}
}

// send writes one command and flushes it.
func (c *respConn) send(args ...string) error {
	c.w.WriteString("*" + strconv.Itoa(len(args)) + "\r\n")
	for _, a := range args {
		c.w.WriteString("$" + strconv.Itoa(len(a)) + "\r\n")
		c.w.WriteString(a)
		c.w.WriteString("\r\n")
	}
	return c.w.Flush()
}

// respPush is a push message: its kind (such as "invalidate") and the rest
// of its elements.
type respPush struct {
	kind string
	args []any
}

// respError is an error reply.
type respError string

func (e respError) Error() string { return string(e) }

// Bounds on what one reply may announce: Redis's own limits (512 MiB
// strings; an invalidation lists the keys of one event loop iteration).
const (
	maxRESPBulk  = 512 << 20
	maxRESPItems = 1 << 24
)

var errRESPProtocol = errors.New("redis: malformed RESP3 reply")

// read reads one reply or push message: a string, int64, bool, nil,
// []any (arrays, sets and maps, flattened), respError or respPush.
func (c *respConn) read() (any, error) {
	line, err := c.line()
	if err != nil {
		return nil, err
	}
	if len(line) == 0 {
		return nil, errRESPProtocol
	}
	// line is bufio's buffer, which the reads below overwrite.
	kind, body := line[0], string(line[1:])
	switch kind {
	case '+', ',', '(':
		return body, nil
	case '-':
		return respError(body), nil
	case ':':
		n, err := strconv.ParseInt(body, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%w: integer %q", errRESPProtocol, body)
		}
		return n, nil
	case '#':
		return body == "t", nil
	case '_':
		return nil, nil
	case '$', '=', '!':
		n, err := c.length(body, maxRESPBulk)
		if err != nil || n < 0 {
			return nil, err
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(c.r, buf); err != nil {
			return nil, err
		}
		if kind == '!' {
			return respError(buf[:n]), nil
		}
		return string(buf[:n]), nil
	case '*', '~', '>', '%', '|':
		n, err := c.length(body, maxRESPItems)
		if err != nil || n < 0 {
			return nil, err
		}
		if kind == '%' || kind == '|' {
			n *= 2
		}
		items := make([]any, n)
		for i := range items {
			if items[i], err = c.read(); err != nil {
				return nil, err
			}
		}
		switch kind {
		case '|': // attributes describe the reply that follows them
			return c.read()
		case '>':
			if len(items) == 0 {
				return nil, fmt.Errorf("%w: empty push message", errRESPProtocol)
			}
			kind, _ := items[0].(string)
			return respPush{kind: kind, args: items[1:]}, nil
		}
		return items, nil
	}
	return nil, fmt.Errorf("%w: type %q", errRESPProtocol, kind)
}

// line reads a line without its CRLF.
func (c *respConn) line() ([]byte, error) {
	line, err := c.r.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return nil, fmt.Errorf("%w: line too long", errRESPProtocol)
		}
		return nil, err
	}
	if len(line) < 2 || line[len(line)-2] != '\r' {
		return nil, fmt.Errorf("%w: line without CRLF", errRESPProtocol)
	}
	return line[:len(line)-2], nil
}

// length parses a length, -1 meaning null, at most limit.
func (c *respConn) length(s string, limit int) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < -1 || n > limit {
		return 0, fmt.Errorf("%w: length %q", errRESPProtocol, s)
	}
	return n, nil
}
