package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/apiquota/limiter"
	"github.com/apiquota/limiter/internal/throttleserver"
)

// TestSessionsRestoreTheirState runs the job twice against one stand-in of
// the API with Defender's quotas (a minute scaled to one second), as a job
// started again right after it ended: with the state saved and restored,
// the server refuses nothing. Then once more without the state: the fresh
// limiter sends the burst the server still counts against the last
// second, and earns 429s. Real time, a few seconds.
func TestSessionsRestoreTheirState(t *testing.T) {
	cfg := throttleserver.Defender(time.Second)
	cfg.WaitInBody = true
	srv := throttleserver.New(cfg)
	url, err := srv.Start()
	require.NoError(t, err)
	t.Cleanup(func() { _ = srv.Close() })

	opt := options{url: url, state: filepath.Join(t.TempDir(), "state"), minute: time.Second,
		calls: 100, sessions: 2, workers: 8}
	var out bytes.Buffer
	require.NoError(t, run(context.Background(), opt, &out))
	t.Log(out.String())
	accepted, throttled := srv.Counts(throttleserver.DefaultKey)
	assert.Zero(t, throttled, "no 429 across the restart")
	assert.Equal(t, 200, accepted)
	assert.Contains(t, out.String(), "session 1: 100 calls (charged 176)")
	assert.Contains(t, out.String(), "session 2: 100 calls (charged 176)")
	assert.Contains(t, out.String(), "0 failed; restored the state; saved it")
	st := srv.Stats(throttleserver.DefaultKey)
	assert.LessOrEqual(t, st.BusiestWindow(), 100)

	opt.state, opt.sessions = "", 1
	require.NoError(t, run(context.Background(), opt, io.Discard))
	_, throttled = srv.Counts(throttleserver.DefaultKey)
	assert.Positive(t, throttled, "without the state, the restarted job sends a burst the server refuses")
}

func TestRunStartsItsOwnStandIn(t *testing.T) {
	opt := options{minute: 200 * time.Millisecond, calls: 30, sessions: 1, workers: 4}
	var out bytes.Buffer
	require.NoError(t, run(context.Background(), opt, &out))
	assert.Contains(t, out.String(), "local stand-in http://127.0.0.1:")
	assert.Contains(t, out.String(), "session 1: 30 calls (charged 49)")
	assert.Contains(t, out.String(), "0 x 429 from the server")
}

func TestBatchCost(t *testing.T) {
	req, cost, err := request(context.Background(), "http://api", 24)
	require.NoError(t, err)
	assert.Equal(t, 20, cost)
	assert.Equal(t, 20, batchCost(req))
	body, _ := io.ReadAll(req.Body)
	assert.Contains(t, string(body), `"requests":[`, "the body is still whole")

	for _, i := range []int{0, 1} {
		req, cost, err := request(context.Background(), "http://api", i)
		require.NoError(t, err)
		assert.Equal(t, 1, cost)
		assert.Equal(t, 1, batchCost(req))
	}
	bad, _ := http.NewRequest(http.MethodPost, "http://api/api/$batch", strings.NewReader("nope"))
	assert.Equal(t, 1, batchCost(bad))
}

func TestDefenderThrottle(t *testing.T) {
	resp := func(status int, body string) *http.Response {
		return &http.Response{StatusCode: status, Body: io.NopCloser(strings.NewReader(body))}
	}
	throttled, wait := defenderThrottle(resp(429, `{"error":{"code":"TooManyRequests","message":"Rate limit is exceeded. Try again in 12 seconds."}}`))
	assert.True(t, throttled)
	assert.Equal(t, 12*time.Second, wait)
	throttled, wait = defenderThrottle(resp(429, `{"error":{"code":"TooManyRequests","message":"slow down"}}`))
	assert.True(t, throttled)
	assert.Zero(t, wait, "unknown: the headers or a backoff decide")
	throttled, _ = defenderThrottle(resp(403, `{"error":{"message":"Try again in 5 seconds"}}`))
	assert.False(t, throttled)

	// Against the stand-in: the only wait is in the body.
	cfg := throttleserver.Defender(time.Minute)
	cfg.WaitInBody, cfg.Limit = true, 1
	rec := httptest.NewRecorder()
	srv := throttleserver.New(cfg)
	srv.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/api/machines", nil))
	srv.ServeHTTP(rec, httptest.NewRequest("GET", "/api/machines", nil))
	throttled, wait = defenderThrottle(rec.Result())
	assert.True(t, throttled)
	assert.InDelta(t, 60, wait.Seconds(), 1)
}

// TestSaveAndRestore saves a client's state and restores it in a new
// one: the advanced hunting queries of the last run still count against
// their route, and bad data changes nothing. A query that would have to
// wait past its context's deadline fails at once, so the test waits for
// nothing.
func TestSaveAndRestore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	ok200 := roundTripFunc(func(req *http.Request) (*http.Response, error) {
		return &http.Response{StatusCode: 200, Body: http.NoBody, Request: req}, nil
	})
	fresh := func() (*http.Client, *limiter.Transport) {
		c, tr, err := newClient(ok200, time.Hour) // the quotas' minute is an hour: nothing frees during the test
		require.NoError(t, err)
		return c, tr
	}
	// hunt sends n queries and returns how many went before one would
	// have had to wait.
	hunt := func(c *http.Client, n int) int {
		for i := range n {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://api/api/advancedqueries/run", http.NoBody)
			require.NoError(t, err)
			resp, err := c.Do(req)
			cancel()
			if err != nil {
				require.ErrorIs(t, err, limiter.ErrWouldExceedDeadline)
				return i
			}
			resp.Body.Close()
		}
		return n
	}
	c, tr := fresh()
	ok, err := restore(tr, path)
	require.NoError(t, err)
	assert.False(t, ok, "no file: a first run")
	require.Equal(t, 40, hunt(c, 40))
	require.NoError(t, save(tr, path))

	again, tr2 := fresh()
	ok, err = restore(tr2, path)
	require.NoError(t, err)
	assert.True(t, ok)
	assert.Equal(t, 5, hunt(again, 10), "the 40 queries still count against the route's 45 after the restart")

	require.NoError(t, os.WriteFile(path, []byte("not a snapshot"), 0o600))
	other, tr3 := fresh()
	_, err = restore(tr3, path)
	assert.Error(t, err)
	assert.Equal(t, 45, hunt(other, 50), "bad data changes nothing")
	entries, _ := os.ReadDir(filepath.Dir(path))
	assert.Len(t, entries, 1, "no temporary file left behind")
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }
