package limiter

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// seekBody is a request body like an *os.File: seekable, and useless once
// closed.
type seekBody struct {
	r      *bytes.Reader
	closed atomic.Int32
}

var errClosedBody = errors.New("file already closed")

func (b *seekBody) Read(p []byte) (int, error) {
	if b.closed.Load() > 0 {
		return 0, errClosedBody
	}
	return b.r.Read(p)
}

func (b *seekBody) Seek(off int64, whence int) (int64, error) {
	if b.closed.Load() > 0 {
		return 0, errClosedBody
	}
	return b.r.Seek(off, whence)
}

func (b *seekBody) Close() error {
	b.closed.Add(1)
	return nil
}

// azcoreRequest returns a request whose GetBody rewinds and hands out the
// very body it was made with, as azcore's requests do.
func azcoreRequest(t *testing.T, payload string) (*http.Request, *seekBody) {
	body := &seekBody{r: bytes.NewReader([]byte(payload))}
	req, err := http.NewRequest(http.MethodPut, "https://acct.blob.core.windows.net/c/b", body)
	require.NoError(t, err)
	req.GetBody = func() (io.ReadCloser, error) {
		if _, err := body.Seek(0, io.SeekStart); err != nil {
			return nil, err
		}
		return body, nil
	}
	return req, body
}

func TestTransportSharedGetBodyStaysUsable(t *testing.T) {
	tr, f, _, _ := newTestTransport(t, t0, 100, 60e9, replies(
		answer(429, "Retry-After", "0"), answer(503, "Retry-After", "0"), answer(201)))
	req, body := azcoreRequest(t, "payload")
	resp, err := syncRoundTrip(t, tr, req)
	require.NoError(t, err)
	assert.Equal(t, 201, resp.StatusCode)
	calls := f.callsSeen()
	require.Len(t, calls, 3)
	for i, c := range calls {
		assert.Equal(t, "payload", c.body, "attempt %d sent the whole body", i)
	}
	assert.Zero(t, body.closed.Load(), "a body GetBody hands out again is the caller's")
	rc, err := req.GetBody()
	require.NoError(t, err, "the caller's own next GetBody works")
	got, err := io.ReadAll(rc)
	require.NoError(t, err)
	assert.Equal(t, "payload", string(got))
}

// A GetBody that makes a new body each time: every body is closed once,
// the caller's after Base closed it.
func TestTransportFreshGetBodiesClosedOnce(t *testing.T) {
	tr, f, _, _ := newTestTransport(t, t0, 100, 60e9, replies(answer(429, "Retry-After", "0"), answer(200)))
	first := newBody("payload")
	var replays []*trackedBody
	req, err := http.NewRequest(http.MethodPost, "https://api.example.com/", first)
	require.NoError(t, err)
	req.GetBody = func() (io.ReadCloser, error) {
		b := newBody("payload")
		replays = append(replays, b)
		return b, nil
	}
	resp, err := syncRoundTrip(t, tr, req)
	require.NoError(t, err)
	assert.Equal(t, 200, resp.StatusCode)
	require.Len(t, f.callsSeen(), 2)
	assert.Equal(t, "payload", f.callsSeen()[1].body)
	assert.Equal(t, int32(1), first.closed.Load(), "the request's body is closed, once")
	require.Len(t, replays, 1)
	assert.Equal(t, int32(1), replays[0].closed.Load(), "the replayed body is closed by Base, once")
}

// Base may close the body after RoundTrip returns (http.Transport's
// writer does): the caller's body is closed then, not before.
func TestSharedBodyClosesWhenBothAreDone(t *testing.T) {
	for _, order := range []string{"base first", "release first"} {
		inner := newBody("x")
		b := newSharedBody(inner)
		if order == "base first" {
			require.NoError(t, b.Close())
			assert.Zero(t, inner.closed.Load(), order)
			require.NoError(t, b.release())
		} else {
			require.NoError(t, b.release())
			assert.Zero(t, inner.closed.Load(), order)
			require.NoError(t, b.Close())
		}
		assert.Equal(t, int32(1), inner.closed.Load(), order)
		require.NoError(t, b.Close())
		assert.Equal(t, int32(1), inner.closed.Load(), "once")
	}
	inner := newBody("x")
	b := newSharedBody(inner)
	b.keep()
	require.NoError(t, b.Close())
	require.NoError(t, b.release())
	assert.Zero(t, inner.closed.Load(), "a kept body is never closed")
}

func TestSameBody(t *testing.T) {
	a, b := newBody("x"), newBody("x")
	assert.True(t, sameBody(a, a))
	assert.False(t, sameBody(a, b))
	assert.False(t, sameBody(a, nil))
	// Values of types that cannot be compared are never the same, and
	// comparing them does not panic.
	type sliceBody struct {
		io.ReadCloser
		b []byte
	}
	s := sliceBody{ReadCloser: a, b: []byte("x")}
	assert.False(t, sameBody(s, s))
}

// Classify sees the start of the body; the caller gets all of it, and a
// body longer than what Classify saw is not cut.
func TestPeekBodyKeepsTheWholeBody(t *testing.T) {
	long := bytes.Repeat([]byte("y"), drainLimit+10)
	inner := &trackedBody{r: bytes.NewReader(long)}
	resp := &http.Response{Body: inner}
	seen := peekBody(resp)
	assert.Len(t, seen, drainLimit)
	got, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	assert.Equal(t, long, got)
	require.NoError(t, resp.Body.Close())
	assert.Equal(t, int32(1), inner.closed.Load())
}
