package integration

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2conn is a bare HTTP/2 client connection, for attacks a gRPC client
// will not make: requests left half-sent, pings too often, a connection
// opened and left idle.
type h2conn struct {
	t      *testing.T
	conn   net.Conn
	fr     *http2.Framer
	enc    *hpack.Encoder
	hbuf   bytes.Buffer
	nextID uint32
	// settings are the server's first SETTINGS.
	settings map[http2.SettingID]uint32
}

// dialH2 connects to a plaintext gRPC server and exchanges SETTINGS, with
// a large window so that the server's flow control is the only bound.
func dialH2(t *testing.T, addr string) *h2conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	c := &h2conn{t: t, conn: conn, fr: http2.NewFramer(conn, conn), nextID: 1, settings: map[http2.SettingID]uint32{}}
	c.enc = hpack.NewEncoder(&c.hbuf)
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.deadline(10 * time.Second)
	if _, err := conn.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	if err := c.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 30}); err != nil {
		t.Fatal(err)
	}
	if err := c.fr.WriteWindowUpdate(0, 1<<30); err != nil {
		t.Fatal(err)
	}
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			t.Fatalf("reading the server's SETTINGS: %v", err)
		}
		if s, ok := f.(*http2.SettingsFrame); ok && !s.IsAck() {
			_ = s.ForeachSetting(func(st http2.Setting) error {
				c.settings[st.ID] = st.Val
				return nil
			})
			if err := c.fr.WriteSettingsAck(); err != nil {
				t.Fatal(err)
			}
			return c
		}
	}
}

func (c *h2conn) deadline(d time.Duration) { _ = c.conn.SetDeadline(time.Now().Add(d)) }

// open starts a gRPC call of method with the given extra headers, and
// returns its stream id; the request is not sent.
func (c *h2conn) open(method string, headers ...string) uint32 {
	c.t.Helper()
	c.hbuf.Reset()
	fields := []string{":method", "POST", ":scheme", "http", ":path", method, ":authority", "nudge",
		"content-type", "application/grpc", "te", "trailers"}
	fields = append(fields, headers...)
	for i := 0; i+1 < len(fields); i += 2 {
		if err := c.enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]}); err != nil {
			c.t.Fatal(err)
		}
	}
	id := c.nextID
	c.nextID += 2
	if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.hbuf.Bytes(), EndHeaders: true}); err != nil {
		c.t.Fatal(err)
	}
	return id
}

// sendPart sends the start of a request message announcing size bytes,
// and n bytes of it: the rest never comes. Keep n under the server's
// stream window (1 MiB): more before the server asks for the message is a
// flow-control error that resets the stream.
func (c *h2conn) sendPart(id uint32, size, n int) {
	c.t.Helper()
	msg := make([]byte, 5+n)
	binary.BigEndian.PutUint32(msg[1:5], uint32(size))
	for len(msg) > 0 {
		chunk := msg[:min(len(msg), 16<<10)]
		msg = msg[len(chunk):]
		if err := c.fr.WriteData(id, false, chunk); err != nil {
			c.t.Fatal(err)
		}
	}
}

// status reads frames until stream id ends, and returns its grpc-status
// and grpc-message ("" when the stream was reset or the connection went
// away first).
func (c *h2conn) status(id uint32) (code, msg string) {
	c.t.Helper()
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			c.t.Fatalf("waiting for the status of stream %d: %v", id, err)
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			if f.StreamID == id {
				if s := f.PseudoValue("status"); s != "" && s != "200" {
					return "http " + s, ""
				}
				for _, hf := range f.Fields {
					switch hf.Name {
					case "grpc-status":
						code = hf.Value
					case "grpc-message":
						msg = hf.Value
					}
				}
				if code != "" {
					return code, msg
				}
			}
		case *http2.RSTStreamFrame:
			if f.StreamID == id {
				return "", ""
			}
		case *http2.GoAwayFrame:
			return "", ""
		}
	}
}

// awaitGoAway reads frames until the server sends GOAWAY, and returns its
// error code and debug data.
func (c *h2conn) awaitGoAway() (http2.ErrCode, string) {
	c.t.Helper()
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			c.t.Fatalf("waiting for GOAWAY: %v", err)
		}
		if g, ok := f.(*http2.GoAwayFrame); ok {
			return g.ErrCode, string(g.DebugData())
		}
	}
}
