package limiter

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// No slot before the deadline: the error says timeout by itself, as
// url.Error and azcore ask it directly, and still unwraps to the sentinel.
func TestTransportDeadlineErrorIsTimeout(t *testing.T) {
	tr, f, l, _ := newTestTransport(t, t0, 1, time.Minute, replies(answer(200)))
	require.True(t, l.Allow(), "the only slot is taken")
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err := (&http.Client{Transport: tr}).Do(newGet(t, ctx, "https://api.example.com/"))
	require.Error(t, err)
	var ue *url.Error
	require.ErrorAs(t, err, &ue)
	assert.True(t, ue.Timeout(), "url.Error sees a timeout")
	var ne net.Error
	assert.ErrorAs(t, err, &ne)

	_, err = tr.RoundTrip(newGet(t, ctx, "https://api.example.com/"))
	assert.ErrorIs(t, err, ErrWouldExceedDeadline)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	to, ok := err.(interface{ Timeout() bool })
	require.True(t, ok, "RoundTrip's error itself has Timeout")
	assert.True(t, to.Timeout())
	_, ok = err.(interface{ NonRetriable() })
	assert.True(t, ok, "and NonRetriable, for azcore")
	assert.Empty(t, f.callsSeen())
}

// Other acquisition errors are returned as they are.
func TestTransportCancelIsNotTimeout(t *testing.T) {
	tr, _, _, _ := newTestTransport(t, t0, 1, time.Minute, replies(answer(200)))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := tr.RoundTrip(newGet(t, ctx, "https://api.example.com/"))
	assert.ErrorIs(t, err, context.Canceled)
	_, ok := err.(interface{ Timeout() bool })
	assert.False(t, ok)
}

// A request that never reached the server spends no slot: its permit is
// cancelled. Any other error may come after the server counted the call.
func TestTransportDialErrorCancelsPermit(t *testing.T) {
	for _, tc := range []struct {
		name  string
		err   error
		spent bool
	}{
		{"dial", &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}, false},
		{"proxy", &net.OpError{Op: "proxyconnect", Net: "tcp", Err: errors.New("connection refused")}, false},
		{"dns", &net.DNSError{Err: "no such host", Name: "api.example.com", IsNotFound: true}, false},
		{"wrapped dial", &url.Error{Op: "Get", URL: "https://api.example.com/", Err: &net.OpError{Op: "dial", Err: errors.New("x")}}, false},
		{"read", &net.OpError{Op: "read", Net: "tcp", Err: errors.New("connection reset by peer")}, true},
		{"write", &net.OpError{Op: "write", Net: "tcp", Err: errors.New("broken pipe")}, true},
		{"other", errors.New("EOF"), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr, _, l, _ := newTestTransport(t, t0, 5, time.Minute, func(int, *http.Request) (*http.Response, error) {
				return nil, tc.err
			})
			_, err := syncRoundTrip(t, tr, newGet(t, context.Background(), "https://api.example.com/"))
			assert.ErrorIs(t, err, tc.err)
			st := l.Stats()
			assert.Equal(t, 0, st.InFlight)
			if tc.spent {
				assert.Equal(t, 1, st.InWindow, "Done: the slot counts")
			} else {
				assert.Equal(t, 0, st.InWindow, "Cancel: the slot is returned")
				assert.Equal(t, 5, l.Remaining())
			}
		})
	}
}

type idleCloser struct {
	fakeRT
	closed int
}

func (c *idleCloser) CloseIdleConnections() { c.closed++ }

func TestTransportCloseIdleConnections(t *testing.T) {
	base := &idleCloser{}
	l, err := New(1, time.Second)
	require.NoError(t, err)
	tr := NewTransport(base, l)
	(&http.Client{Transport: tr}).CloseIdleConnections()
	assert.Equal(t, 1, base.closed, "forwarded to Base")
	NewTransport(&fakeRT{}, l).CloseIdleConnections() // a Base without it: nothing happens
}
