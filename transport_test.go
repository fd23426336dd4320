package limiter

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// trackedBody is a response or request body that records whether it was
// closed and how much of it was read.
type trackedBody struct {
	r      io.Reader
	read   atomic.Int64
	closed atomic.Int32
}

func newBody(s string) *trackedBody { return &trackedBody{r: strings.NewReader(s)} }

func (b *trackedBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	b.read.Add(int64(n))
	return n, err
}

func (b *trackedBody) Close() error {
	b.closed.Add(1)
	return nil
}

// fakeCall is what the fake server saw of one request.
type fakeCall struct {
	at     time.Time
	req    *http.Request
	body   string
	header http.Header
}

// fakeRT is an in-memory http.RoundTripper. It reads and closes the
// request body, as a real one does, records the call, and answers with
// reply(n) for the n-th call (from 0).
type fakeRT struct {
	clock Clock
	reply func(n int, req *http.Request) (*http.Response, error)

	mu     sync.Mutex
	calls  []fakeCall
	bodies []*trackedBody // the bodies of the responses returned
}

func (f *fakeRT) RoundTrip(req *http.Request) (*http.Response, error) {
	var body []byte
	if req.Body != nil {
		body, _ = io.ReadAll(req.Body)
		req.Body.Close()
	}
	f.mu.Lock()
	n := len(f.calls)
	f.calls = append(f.calls, fakeCall{at: f.clock.Now(), req: req, body: string(body), header: req.Header.Clone()})
	f.mu.Unlock()
	resp, err := f.reply(n, req)
	if resp != nil {
		b := newBody(strings.Repeat("x", 100))
		resp.Body = b
		resp.Request = req
		f.mu.Lock()
		f.bodies = append(f.bodies, b)
		f.mu.Unlock()
	}
	return resp, err
}

func (f *fakeRT) callsSeen() []fakeCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fakeCall(nil), f.calls...)
}

func (f *fakeRT) body(i int) *trackedBody {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.bodies[i]
}

// respond returns a response with the status and the header name, value
// pairs.
func respond(status int, kv ...string) *http.Response {
	return &http.Response{StatusCode: status, Header: mkHeader(kv...), ProtoMajor: 1, ProtoMinor: 1}
}

// replies answers the n-th call with rs[n], and the last one after.
func replies(rs ...func() *http.Response) func(int, *http.Request) (*http.Response, error) {
	return func(n int, _ *http.Request) (*http.Response, error) {
		return rs[min(n, len(rs)-1)](), nil
	}
}

func answer(code int, kv ...string) func() *http.Response {
	return func() *http.Response { return respond(code, kv...) }
}

// newTestTransport returns a Transport over a fake server and a limiter of
// limit per window on a ManualClock that reads start.
func newTestTransport(t *testing.T, start time.Time, limit int, window time.Duration, reply func(int, *http.Request) (*http.Response, error)) (*Transport, *fakeRT, *Limiter, *ManualClock) {
	t.Helper()
	c := NewManualClock(start)
	l, err := New(limit, window, WithClock(c))
	require.NoError(t, err)
	f := &fakeRT{clock: c, reply: reply}
	return NewTransport(f, l), f, l, c
}

func newGet(t *testing.T, ctx context.Context, url string) *http.Request {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	require.NoError(t, err)
	return req
}

type rtResult struct {
	resp *http.Response
	err  error
}

// roundTrip starts rt.RoundTrip(req) and returns where its result arrives.
func roundTrip(rt http.RoundTripper, req *http.Request) <-chan rtResult {
	ch := make(chan rtResult, 1)
	go func() {
		resp, err := rt.RoundTrip(req)
		ch <- rtResult{resp, err}
	}()
	return ch
}

// blockUntil waits until n timers wait on c; if that takes seconds of real
// time, the code under test is stuck, and the test fails rather than hangs.
func blockUntil(t *testing.T, c *ManualClock, n int, msgAndArgs ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, c.BlockUntil(ctx, n), msgAndArgs...)
}

// recv returns what ch delivers, failing the test if nothing comes within
// seconds of real time.
func recv[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatal("nothing arrived: stuck")
		panic("unreachable")
	}
}

// syncRoundTrip is tr.RoundTrip(req), failing the test if it gets stuck.
func syncRoundTrip(t *testing.T, tr http.RoundTripper, req *http.Request) (*http.Response, error) {
	t.Helper()
	r := recv(t, roundTrip(tr, req))
	return r.resp, r.err
}

func requirePending(t *testing.T, ch <-chan rtResult) {
	t.Helper()
	select {
	case r := <-ch:
		t.Fatalf("RoundTrip returned %v, %v; want it still waiting", r.resp, r.err)
	default:
	}
}

func TestTransportDefaults(t *testing.T) {
	l, err := New(1, time.Second)
	require.NoError(t, err)
	tr := NewTransport(nil, l)
	assert.Equal(t, 2, tr.MaxRetries)
	assert.Equal(t, 5*time.Minute, tr.MaxRetryAfter)
	assert.Same(t, http.DefaultTransport, tr.base())
	var _ http.RoundTripper = tr
}

func TestTransportRetryAfterPausesThenRetries(t *testing.T) {
	tr, f, l, c := newTestTransport(t, t0, 100, time.Minute, replies(
		answer(http.StatusTooManyRequests, "Retry-After", "10"),
		answer(http.StatusOK),
	))
	ctx := context.Background()
	ch := roundTrip(tr, newGet(t, ctx, "https://api.example.com/v1/things"))

	blockUntil(t, c, 1, "the retry waits on the clock")
	assert.Equal(t, t0.Add(10*time.Second), l.Stats().PausedUntil, "paused to exactly the server's time")
	assert.Len(t, f.callsSeen(), 1)
	assert.Equal(t, int32(1), f.body(0).closed.Load(), "the 429's body is closed")
	assert.Equal(t, int64(100), f.body(0).read.Load(), "and drained")

	c.Advance(10*time.Second - time.Nanosecond)
	requirePending(t, ch)
	assert.Len(t, f.callsSeen(), 1, "no retry before the Retry-After")
	c.Advance(time.Nanosecond)
	r := recv(t, ch)
	require.NoError(t, r.err)
	assert.Equal(t, http.StatusOK, r.resp.StatusCode)
	calls := f.callsSeen()
	require.Len(t, calls, 2)
	assert.Equal(t, t0.Add(10*time.Second), calls[1].at, "the retry goes at the Retry-After")
	assert.Equal(t, int32(0), f.body(1).closed.Load(), "the returned body is the caller's to close")
	st := l.Stats()
	assert.Equal(t, 2, st.InWindow, "both attempts count")
	assert.Equal(t, 0, st.InFlight, "every permit ended")
}

func TestTransportThrottleWaits(t *testing.T) {
	date := t0.Add(90 * time.Second).Format(http.TimeFormat)
	for _, tc := range []struct {
		name   string
		status int
		kv     []string
		want   time.Duration // the pause; -1 for a backoff of 1s with jitter
	}{
		{"seconds", 429, []string{"Retry-After", "7"}, 7 * time.Second},
		{"fraction", 429, []string{"Retry-After", "2.128"}, 3 * time.Second},
		{"date", 429, []string{"Retry-After", date}, 90 * time.Second},
		{"retry-after-ms", 429, []string{"Retry-After-Ms", "1500"}, 1500 * time.Millisecond},
		{"x-ms-retry-after-ms", 429, []string{"X-Ms-Retry-After-Ms", "250"}, 250 * time.Millisecond},
		{"capped", 429, []string{"Retry-After", "86400"}, 5 * time.Minute},
		{"huge", 429, []string{"Retry-After", "99999999999999999999"}, 5 * time.Minute},
		{"503 with Retry-After", 503, []string{"Retry-After", "4"}, 4 * time.Second},
		{"429 with reset only", 429, []string{"X-RateLimit-Remaining", "0", "X-RateLimit-Reset", "12"}, 12 * time.Second},
		{"missing", 429, nil, -1},
		{"negative", 429, []string{"Retry-After", "-1"}, -1},
		{"NaN", 429, []string{"Retry-After", "NaN"}, -1},
		{"exponent", 429, []string{"Retry-After", "1e309"}, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr, f, l, _ := newTestTransport(t, t0, 100, time.Minute, replies(answer(tc.status, tc.kv...)))
			tr.MaxRetries = 0
			var throttled []time.Duration
			tr.OnThrottle = func(_ *http.Request, _ *http.Response, wait time.Duration) {
				throttled = append(throttled, wait)
			}
			resp, err := syncRoundTrip(t, tr, newGet(t, context.Background(), "https://api.example.com/"))
			require.NoError(t, err)
			assert.Equal(t, tc.status, resp.StatusCode)
			assert.Len(t, f.callsSeen(), 1)
			require.Len(t, throttled, 1)
			paused := l.Stats().PausedUntil.Sub(t0)
			if tc.want < 0 {
				assert.GreaterOrEqual(t, paused, 500*time.Millisecond)
				assert.LessOrEqual(t, paused, time.Second)
			} else {
				assert.Equal(t, tc.want, paused)
			}
			assert.Equal(t, paused, throttled[0], "OnThrottle hears the wait chosen")
		})
	}
}

func TestTransportMaxRetryAfterZeroMeansDefault(t *testing.T) {
	tr, _, l, _ := newTestTransport(t, t0, 100, time.Minute, replies(answer(429, "Retry-After", "3600")))
	tr.MaxRetries = 0
	tr.MaxRetryAfter = 0
	_, err := syncRoundTrip(t, tr, newGet(t, context.Background(), "https://api.example.com/"))
	require.NoError(t, err)
	assert.Equal(t, t0.Add(DefaultMaxRetryAfter), l.Stats().PausedUntil)
}

func TestTransportRetryLimit(t *testing.T) {
	for _, max := range []int{0, 1, 2, 3} {
		tr, f, _, c := newTestTransport(t, t0, 100, time.Minute, replies(answer(429, "Retry-After", "1")))
		tr.MaxRetries = max
		ctx := context.Background()
		ch := roundTrip(tr, newGet(t, ctx, "https://api.example.com/"))
		for i := range max {
			blockUntil(t, c, 1, "retry %d", i+1)
			c.Advance(time.Second)
		}
		r := recv(t, ch)
		require.NoError(t, r.err)
		assert.Equal(t, 429, r.resp.StatusCode, "the last 429 is returned")
		require.Len(t, f.callsSeen(), max+1, "MaxRetries %d", max)
		for i := range max {
			assert.Equal(t, int32(1), f.body(i).closed.Load(), "discarded body %d closed", i)
		}
		assert.Equal(t, int32(0), f.body(max).closed.Load(), "the returned body is open")
		assert.Same(t, f.body(max), r.resp.Body, "returned as it is")
	}
}

func TestTransportNegativeMaxRetries(t *testing.T) {
	tr, f, _, _ := newTestTransport(t, t0, 100, time.Minute, replies(answer(429, "Retry-After", "1")))
	tr.MaxRetries = -1
	resp, err := syncRoundTrip(t, tr, newGet(t, context.Background(), "https://api.example.com/"))
	require.NoError(t, err)
	assert.Equal(t, 429, resp.StatusCode)
	assert.Len(t, f.callsSeen(), 1)
}

func TestTransportNonReplayableBody(t *testing.T) {
	tr, f, l, _ := newTestTransport(t, t0, 100, time.Minute, replies(answer(429, "Retry-After", "5"), answer(200)))
	body := newBody("payload")
	req, err := http.NewRequest(http.MethodPost, "https://api.example.com/", body)
	require.NoError(t, err)
	require.Nil(t, req.GetBody, "a custom reader has no GetBody")
	resp, err := syncRoundTrip(t, tr, req)
	require.NoError(t, err)
	assert.Equal(t, 429, resp.StatusCode, "returned, not retried")
	assert.Len(t, f.callsSeen(), 1)
	assert.Same(t, f.body(0), resp.Body)
	assert.Equal(t, int32(0), f.body(0).closed.Load(), "the 429 is returned as it is")
	assert.Equal(t, int64(0), f.body(0).read.Load())
	assert.Equal(t, int32(1), body.closed.Load(), "the request body was closed, once")
	assert.Equal(t, t0.Add(5*time.Second), l.Stats().PausedUntil, "the limiter is paused all the same")
}

func TestTransportReplaysBodyAndKeepsRequest(t *testing.T) {
	tr, f, _, _ := newTestTransport(t, t0, 100, time.Minute, replies(answer(429, "Retry-After", "0"), answer(201)))
	req, err := http.NewRequest(http.MethodPost, "https://api.example.com/items?x=1", bytes.NewReader([]byte(`{"a":1}`)))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer t")
	req.Header.Set("Content-Type", "application/json")
	origBody, origHeader, origURL := req.Body, req.Header.Clone(), *req.URL

	resp, err := syncRoundTrip(t, tr, req)
	require.NoError(t, err)
	assert.Equal(t, 201, resp.StatusCode)
	calls := f.callsSeen()
	require.Len(t, calls, 2)
	assert.Equal(t, `{"a":1}`, calls[0].body)
	assert.Equal(t, `{"a":1}`, calls[1].body, "the retry sends the same bytes")
	assert.Equal(t, origHeader, calls[1].header)
	assert.NotSame(t, req, calls[1].req, "the retry is a clone")
	assert.Equal(t, t0, calls[1].at, "Retry-After: 0 retries at once")

	assert.True(t, origBody == req.Body, "the caller's request keeps its body")
	assert.Equal(t, origHeader, req.Header, "and its header")
	assert.Equal(t, origURL, *req.URL, "and its URL")
	assert.Equal(t, int32(1), f.body(0).closed.Load())
}

func TestTransportDeadlineReturns429AtOnce(t *testing.T) {
	// The context's deadline is compared with the limiter's clock, so this
	// clock starts at the real time.
	start := time.Now()
	tr, f, l, _ := newTestTransport(t, start, 100, time.Minute, replies(answer(429, "Retry-After", "120"), answer(200)))
	ctx, cancel := context.WithDeadline(context.Background(), start.Add(time.Minute))
	defer cancel()
	resp, err := syncRoundTrip(t, tr, newGet(t, ctx, "https://api.example.com/"))
	require.NoError(t, err)
	assert.Equal(t, 429, resp.StatusCode, "a retry would go after the deadline")
	assert.Len(t, f.callsSeen(), 1)
	assert.Equal(t, int32(0), f.body(0).closed.Load())
	assert.Equal(t, start.Add(120*time.Second), l.Stats().PausedUntil)
}

func TestTransportRetriesBeforeDeadline(t *testing.T) {
	start := time.Now()
	tr, f, _, c := newTestTransport(t, start, 100, time.Minute, replies(answer(429, "Retry-After", "30"), answer(200)))
	ctx, cancel := context.WithDeadline(context.Background(), start.Add(time.Hour))
	defer cancel()
	ch := roundTrip(tr, newGet(t, ctx, "https://api.example.com/"))
	blockUntil(t, c, 1)
	c.Advance(30 * time.Second)
	r := recv(t, ch)
	require.NoError(t, r.err)
	assert.Equal(t, 200, r.resp.StatusCode)
	assert.Len(t, f.callsSeen(), 2)
}

func TestTransport503WithoutRetryAfter(t *testing.T) {
	tr, f, l, _ := newTestTransport(t, t0, 100, time.Minute, replies(answer(503), answer(200)))
	throttled := 0
	tr.OnThrottle = func(*http.Request, *http.Response, time.Duration) { throttled++ }
	resp, err := syncRoundTrip(t, tr, newGet(t, context.Background(), "https://api.example.com/"))
	require.NoError(t, err)
	assert.Equal(t, 503, resp.StatusCode)
	assert.Len(t, f.callsSeen(), 1, "not retried")
	assert.Zero(t, throttled)
	assert.True(t, l.Stats().PausedUntil.IsZero())
}

func TestTransport503WithRetryAfterRetries(t *testing.T) {
	tr, f, _, c := newTestTransport(t, t0, 100, time.Minute, replies(answer(503, "Retry-After", "2"), answer(200)))
	ctx := context.Background()
	ch := roundTrip(tr, newGet(t, ctx, "https://api.example.com/"))
	blockUntil(t, c, 1)
	c.Advance(2 * time.Second)
	r := recv(t, ch)
	require.NoError(t, r.err)
	assert.Equal(t, 200, r.resp.StatusCode)
	assert.Len(t, f.callsSeen(), 2)
}

func TestTransportQuotaHeadersPause(t *testing.T) {
	unix := func(d time.Duration) string { return strconv.FormatInt(t0.Add(d).Unix(), 10) }
	for _, tc := range []struct {
		name string
		kv   []string
		want time.Duration // 0: no pause
	}{
		{"draft structured", []string{"RateLimit", `"default";r=0;t=20`, "RateLimit-Policy", `"default";q=100;w=60`}, 20 * time.Second},
		{"draft structured, some left", []string{"RateLimit", `"default";r=3;t=20`, "RateLimit-Policy", `"default";q=100;w=60`}, 0},
		{"older draft", []string{"RateLimit-Remaining", "0", "RateLimit-Reset", "25"}, 25 * time.Second},
		{"X- delta", []string{"X-RateLimit-Remaining", "0", "X-RateLimit-Reset", "15"}, 15 * time.Second},
		{"X- Unix", []string{"X-RateLimit-Remaining", "0", "X-RateLimit-Reset", unix(45 * time.Second)}, 45 * time.Second},
		{"X- some left", []string{"X-RateLimit-Remaining", "9", "X-RateLimit-Reset", "15"}, 0},
		{"capped", []string{"X-RateLimit-Remaining", "0", "X-RateLimit-Reset", "86400"}, 5 * time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr, f, l, _ := newTestTransport(t, t0, 100, time.Minute, replies(answer(200, tc.kv...)))
			resp, err := syncRoundTrip(t, tr, newGet(t, context.Background(), "https://api.example.com/"))
			require.NoError(t, err)
			assert.Equal(t, 200, resp.StatusCode)
			assert.Len(t, f.callsSeen(), 1)
			if tc.want == 0 {
				assert.True(t, l.Stats().PausedUntil.IsZero(), "not paused")
				assert.Equal(t, 99, l.Remaining(), "and not loosened either")
				return
			}
			assert.Equal(t, t0.Add(tc.want), l.Stats().PausedUntil)
			assert.Zero(t, l.Remaining())
		})
	}
}

func TestTransportHooks(t *testing.T) {
	tr, _, _, c := newTestTransport(t, t0, 1, time.Minute, replies(answer(429, "Retry-After", "3"), answer(200)))
	type waited struct {
		req *http.Request
		d   time.Duration
	}
	var mu sync.Mutex
	var waits []waited
	var throttles []time.Duration
	tr.WaitThreshold = 2 * time.Second
	tr.OnWait = func(req *http.Request, d time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		waits = append(waits, waited{req, d})
	}
	tr.OnThrottle = func(req *http.Request, resp *http.Response, wait time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		throttles = append(throttles, wait)
		assert.Equal(t, 429, resp.StatusCode)
		assert.Equal(t, "3", resp.Header.Get("Retry-After"))
	}
	ctx := context.Background()
	req := newGet(t, ctx, "https://api.example.com/")
	ch := roundTrip(tr, req)
	// Limit 1 per minute: the retry waits for the window, not only the 3s.
	blockUntil(t, c, 1)
	c.Advance(time.Minute)
	r := recv(t, ch)
	require.NoError(t, r.err)
	assert.Equal(t, 200, r.resp.StatusCode)

	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, []time.Duration{3 * time.Second}, throttles)
	require.Len(t, waits, 1, "the first acquisition took no time")
	assert.Same(t, req, waits[0].req, "hooks see the caller's request")
	assert.Equal(t, time.Minute, waits[0].d)
}

func TestTransportOnWaitThreshold(t *testing.T) {
	tr, _, _, c := newTestTransport(t, t0, 1, time.Second, replies(answer(200)))
	var got []time.Duration
	tr.WaitThreshold = time.Second
	tr.OnWait = func(_ *http.Request, d time.Duration) { got = append(got, d) }
	ctx := context.Background()
	_, err := syncRoundTrip(t, tr, newGet(t, ctx, "https://api.example.com/"))
	require.NoError(t, err)
	ch := roundTrip(tr, newGet(t, ctx, "https://api.example.com/"))
	blockUntil(t, c, 1)
	c.Advance(time.Second)
	require.NoError(t, (recv(t, ch)).err)
	assert.Empty(t, got, "a wait of exactly the threshold is not reported")
}

func TestTransportPermitDoneWhenHeadersArrive(t *testing.T) {
	release := make(chan struct{})
	arrived := make(chan struct{})
	tr, _, l, c := newTestTransport(t, t0, 2, time.Minute, func(n int, _ *http.Request) (*http.Response, error) {
		close(arrived)
		<-release
		return respond(200), nil
	})
	ch := roundTrip(tr, newGet(t, context.Background(), "https://api.example.com/"))
	<-arrived
	assert.Equal(t, 1, l.Stats().InFlight, "the permit is held while the call is in flight")
	c.Advance(5 * time.Second)
	close(release)
	r := recv(t, ch)
	require.NoError(t, r.err)
	st := l.Stats()
	assert.Equal(t, 0, st.InFlight)
	assert.Equal(t, 1, st.InWindow)
	c.Set(t0.Add(5*time.Second + time.Minute - time.Nanosecond))
	assert.Equal(t, 1, l.Stats().InWindow, "the call counts from when its response arrived")
	c.Set(t0.Add(5*time.Second + time.Minute))
	assert.Equal(t, 0, l.Stats().InWindow)
}

func TestTransportBaseError(t *testing.T) {
	boom := errors.New("connection refused")
	tr, _, l, _ := newTestTransport(t, t0, 5, time.Minute, func(int, *http.Request) (*http.Response, error) {
		return nil, boom
	})
	resp, err := syncRoundTrip(t, tr, newGet(t, context.Background(), "https://api.example.com/"))
	assert.Nil(t, resp)
	assert.ErrorIs(t, err, boom)
	st := l.Stats()
	assert.Equal(t, 1, st.InWindow, "a failed attempt may have reached the server: Done, not Cancel")
	assert.Equal(t, 0, st.InFlight)
}

func TestTransportResponseAndErrorNeverBoth(t *testing.T) {
	boom := errors.New("half a response")
	tr, f, _, _ := newTestTransport(t, t0, 5, time.Minute, func(int, *http.Request) (*http.Response, error) {
		return respond(200), boom
	})
	resp, err := syncRoundTrip(t, tr, newGet(t, context.Background(), "https://api.example.com/"))
	assert.Nil(t, resp)
	assert.ErrorIs(t, err, boom)
	assert.Equal(t, int32(1), f.body(0).closed.Load(), "the stray response is closed")
}

func TestTransportAcquireErrorClosesBody(t *testing.T) {
	tr, f, l, _ := newTestTransport(t, t0, 5, time.Minute, replies(answer(200)))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	body := newBody("payload")
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://api.example.com/", body)
	require.NoError(t, err)
	resp, err := syncRoundTrip(t, tr, req)
	assert.Nil(t, resp)
	assert.ErrorIs(t, err, context.Canceled)
	assert.Equal(t, int32(1), body.closed.Load())
	assert.Empty(t, f.callsSeen())
	assert.Equal(t, 5, l.Remaining(), "no slot taken")
}

func TestTransportCancelledWhileWaitingForRetry(t *testing.T) {
	tr, f, _, c := newTestTransport(t, t0, 100, time.Minute, replies(answer(429, "Retry-After", "10"), answer(200)))
	ctx, cancel := context.WithCancel(context.Background())
	ch := roundTrip(tr, newGet(t, ctx, "https://api.example.com/"))
	blockUntil(t, c, 1)
	cancel()
	r := recv(t, ch)
	assert.Nil(t, r.resp)
	assert.ErrorIs(t, r.err, context.Canceled)
	assert.Len(t, f.callsSeen(), 1)
	assert.Equal(t, int32(1), f.body(0).closed.Load(), "the 429 was drained and closed")
}

func TestTransportGetBodyError(t *testing.T) {
	tr, f, l, _ := newTestTransport(t, t0, 100, time.Minute, replies(answer(429, "Retry-After", "0"), answer(200)))
	req, err := http.NewRequest(http.MethodPut, "https://api.example.com/", strings.NewReader("x"))
	require.NoError(t, err)
	bad := errors.New("gone")
	req.GetBody = func() (io.ReadCloser, error) { return nil, bad }
	resp, err := syncRoundTrip(t, tr, req)
	assert.Nil(t, resp)
	assert.ErrorIs(t, err, bad)
	assert.Len(t, f.callsSeen(), 1)
	st := l.Stats()
	assert.Equal(t, 1, st.InWindow, "the unsent retry's permit was cancelled")
	assert.Equal(t, 0, st.InFlight)
}

func TestTransportWithoutLimiter(t *testing.T) {
	var nilLimiter *Limiter
	for name, tr := range map[string]*Transport{
		"zero":         {Base: &fakeRT{}},
		"nil Acquirer": NewTransport(&fakeRT{}, nil),
		"nil *Limiter": NewTransport(&fakeRT{}, nilLimiter),
		"nil *Group":   NewGroupTransport(&fakeRT{}, nil, nil),
	} {
		body := newBody("x")
		req, err := http.NewRequest(http.MethodPost, "https://api.example.com/", body)
		require.NoError(t, err)
		resp, err := syncRoundTrip(t, tr, req)
		assert.Nil(t, resp, name)
		assert.ErrorIs(t, err, errNoLimiter, name)
		assert.Equal(t, int32(1), body.closed.Load(), name)
	}
}

// acquireOnly is an Acquirer that is not a Pauser.
type acquireOnly struct{ l *Limiter }

func (a acquireOnly) Acquire(ctx context.Context) (Permit, error) { return a.l.Acquire(ctx) }

func TestTransportSleepsForAcquirerWithoutPause(t *testing.T) {
	c := NewManualClock(t0)
	l, err := New(100, time.Minute, WithClock(c))
	require.NoError(t, err)
	f := &fakeRT{clock: c, reply: replies(answer(429, "Retry-After", "5"), answer(200))}
	tr := NewTransport(f, acquireOnly{l})
	tr.Clock = c
	ctx := context.Background()
	ch := roundTrip(tr, newGet(t, ctx, "https://api.example.com/"))
	blockUntil(t, c, 1, "the Transport sleeps on its clock")
	assert.True(t, l.Stats().PausedUntil.IsZero(), "nothing to pause")
	c.Advance(5*time.Second - time.Nanosecond)
	requirePending(t, ch)
	c.Advance(time.Nanosecond)
	r := recv(t, ch)
	require.NoError(t, r.err)
	assert.Equal(t, 200, r.resp.StatusCode)
	calls := f.callsSeen()
	require.Len(t, calls, 2)
	assert.Equal(t, t0.Add(5*time.Second), calls[1].at)
}

func TestGroupTransportKeysByHost(t *testing.T) {
	c := NewManualClock(t0)
	g, err := NewGroup(2, time.Minute, WithClock(c))
	require.NoError(t, err)
	f := &fakeRT{clock: c, reply: func(_ int, req *http.Request) (*http.Response, error) {
		if req.URL.Host == "a.example.com" {
			return respond(429, "Retry-After", "30"), nil
		}
		return respond(200), nil
	}}
	tr := NewGroupTransport(f, g, nil)
	tr.MaxRetries = 0
	ctx := context.Background()
	resp, err := syncRoundTrip(t, tr, newGet(t, ctx, "https://a.example.com/x"))
	require.NoError(t, err)
	assert.Equal(t, 429, resp.StatusCode)
	resp, err = syncRoundTrip(t, tr, newGet(t, ctx, "https://b.example.com/y"))
	require.NoError(t, err)
	assert.Equal(t, 200, resp.StatusCode)

	a, b := g.Get("a.example.com").Stats(), g.Get("b.example.com").Stats()
	assert.Equal(t, t0.Add(30*time.Second), a.PausedUntil, "a's limiter paused")
	assert.True(t, b.PausedUntil.IsZero(), "b's not")
	assert.Equal(t, 1, a.InWindow)
	assert.Equal(t, 1, b.InWindow)
	assert.Equal(t, 2, g.Len())
}

func TestGroupTransportKeyFunc(t *testing.T) {
	c := NewManualClock(t0)
	g, err := NewGroup(1, time.Minute, WithClock(c))
	require.NoError(t, err)
	f := &fakeRT{clock: c, reply: replies(answer(200))}
	tr := NewGroupTransport(f, g, func(r *http.Request) string { return r.Header.Get("X-Tenant") })
	ctx := context.Background()
	for _, tenant := range []string{"t1", "t2"} {
		req := newGet(t, ctx, "https://api.example.com/")
		req.Header.Set("X-Tenant", tenant)
		_, err := syncRoundTrip(t, tr, req)
		require.NoError(t, err)
	}
	assert.Equal(t, 1, g.Get("t1").Stats().InWindow)
	assert.Equal(t, 1, g.Get("t2").Stats().InWindow)
	assert.Equal(t, 2, g.Len(), "one limiter per tenant, none per host")
}

// A benchmark's Transport and bare RoundTripper answer every request with
// the same response, as fast as memory allows.
type staticRT struct{ resp *http.Response }

func (s staticRT) RoundTrip(*http.Request) (*http.Response, error) { return s.resp, nil }

func benchRequest(b *testing.B) (*http.Request, http.RoundTripper) {
	req, err := http.NewRequest(http.MethodGet, "https://api.example.com/v1/things", nil)
	if err != nil {
		b.Fatal(err)
	}
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	h.Set("X-RateLimit-Remaining", "99")
	h.Set("X-RateLimit-Reset", "60")
	return req, staticRT{&http.Response{StatusCode: 200, Header: h, Body: http.NoBody}}
}

func BenchmarkBareRoundTripper(b *testing.B) {
	req, rt := benchRequest(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := rt.RoundTrip(req); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkTransport(b *testing.B) {
	req, rt := benchRequest(b)
	// A limiter that never makes a call wait: its window is over before
	// the next call.
	l, err := New(1, time.Nanosecond)
	if err != nil {
		b.Fatal(err)
	}
	tr := NewTransport(rt, l)
	b.ReportAllocs()
	reportCPU(b)
	for b.Loop() {
		if _, err := tr.RoundTrip(req); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkGroupTransport(b *testing.B) {
	req, rt := benchRequest(b)
	g, err := NewGroup(1, time.Nanosecond)
	if err != nil {
		b.Fatal(err)
	}
	tr := NewGroupTransport(rt, g, nil)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := tr.RoundTrip(req); err != nil {
			b.Fatal(err)
		}
	}
}

// TestGroupTransportConcurrent sends requests to a few hosts from many
// goroutines while Len sweeps the group: every call is counted by its
// host's limiter, none is lost with a dropped one.
func TestGroupTransportConcurrent(t *testing.T) {
	const hosts, workers, each = 5, 8, 50
	c := NewManualClock(t0)
	g, err := NewGroup(1000, time.Minute, WithClock(c))
	require.NoError(t, err)
	f := &fakeRT{clock: c, reply: replies(answer(200))}
	tr := NewGroupTransport(f, g, nil)
	stop := make(chan struct{})
	swept := make(chan struct{})
	go func() {
		defer close(swept)
		for {
			select {
			case <-stop:
				return
			default:
				g.Len()
			}
		}
	}()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				req, err := http.NewRequest(http.MethodGet, "https://h"+strconv.Itoa((w+i)%hosts)+".example.com/", nil)
				if !assert.NoError(t, err) {
					return
				}
				resp, err := tr.RoundTrip(req)
				if assert.NoError(t, err) {
					resp.Body.Close()
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-swept
	assert.Len(t, f.callsSeen(), workers*each)
	total := 0
	for h := range hosts {
		total += g.Get("h" + strconv.Itoa(h) + ".example.com").Stats().InWindow
	}
	assert.Equal(t, workers*each, total)
	assert.Equal(t, hosts, g.Len())
}

// A 429 whose Retry-After ends before the deadline but whose quota reset,
// which the Transport also pauses for, ends after it: the retry cannot go
// in time, so the 429 comes back at once, not an error.
func TestTransportDeadlineCountsTheWholePause(t *testing.T) {
	start := time.Now()
	tr, f, _, _ := newTestTransport(t, start, 100, time.Minute, replies(
		answer(429, "Retry-After", "1", "X-RateLimit-Remaining", "0", "X-RateLimit-Reset", "120"),
		answer(200)))
	ctx, cancel := context.WithDeadline(context.Background(), start.Add(time.Minute))
	defer cancel()
	resp, err := syncRoundTrip(t, tr, newGet(t, ctx, "https://api.example.com/"))
	require.NoError(t, err, "the 429 is returned, not an error")
	assert.Equal(t, 429, resp.StatusCode)
	assert.Len(t, f.callsSeen(), 1)
}

// Another request paused the limiter past the deadline while this one was
// in flight: its retry cannot get a permit in time, and the caller gets the
// throttled response, body and all.
func TestTransportRetryWithoutPermitReturns429(t *testing.T) {
	start := time.Now()
	tr, f, l, _ := newTestTransport(t, start, 100, time.Minute, nil)
	f.reply = func(n int, r *http.Request) (*http.Response, error) {
		if n == 0 {
			l.PauseUntil(start.Add(2 * time.Minute))
		}
		return replies(answer(429, "Retry-After", "1"), answer(200))(n, r)
	}
	ctx, cancel := context.WithDeadline(context.Background(), start.Add(time.Minute))
	defer cancel()
	resp, err := syncRoundTrip(t, tr, newGet(t, ctx, "https://api.example.com/"))
	require.NoError(t, err, "the 429 is returned, not ErrWouldExceedDeadline")
	assert.Equal(t, 429, resp.StatusCode)
	assert.Len(t, f.callsSeen(), 1)
	_, err = io.ReadAll(resp.Body)
	assert.NoError(t, err, "the body of the returned 429 is readable")
	assert.NoError(t, resp.Body.Close())
}

// A limiter that never queues: the retry cannot be admitted at once, so the
// caller gets the 429, not ErrQueueFull.
func TestTransportNoQueueReturns429(t *testing.T) {
	c := NewManualClock(t0)
	l, err := New(100, time.Minute, WithClock(c), WithMaxWaiters(0))
	require.NoError(t, err)
	f := &fakeRT{clock: c, reply: replies(answer(429, "Retry-After", "1"), answer(200))}
	resp, err := syncRoundTrip(t, NewTransport(f, l), newGet(t, context.Background(), "https://api.example.com/"))
	require.NoError(t, err)
	assert.Equal(t, 429, resp.StatusCode)
}

// A request that needs no wait allocates nothing in the Transport, with
// or without a route: the trip lives on the stack, and a slot granted at
// once is held without a Permit.
func TestTransportAllocatesNothing(t *testing.T) {
	if raceOn {
		t.Skip("the race detector allocates")
	}
	for _, path := range []string{"/v1/things", "/v1/routed"} {
		req, err := http.NewRequest(http.MethodGet, "https://api.example.com"+path, nil)
		require.NoError(t, err)
		h := http.Header{}
		h.Set("X-RateLimit-Remaining", "99")
		h.Set("X-RateLimit-Reset", "60")
		c := NewManualClock(t0)
		l, err := New(1, time.Second, WithClock(c))
		require.NoError(t, err)
		tr := NewTransport(staticRT{&http.Response{StatusCode: 200, Header: h, Body: http.NoBody}}, l)
		require.NoError(t, tr.Route("/v1/routed", 1, time.Second))
		_, err = tr.RoundTrip(req) // the route's limiter and cache answer are made once
		require.NoError(t, err)
		allocs := testing.AllocsPerRun(100, func() {
			// Each call finds its slots free, before the server's reset.
			c.Advance(time.Second)
			if _, err := tr.RoundTrip(req); err != nil {
				t.Fatal(err)
			}
		})
		assert.Equal(t, 1, l.Stats().InWindow)
		assert.Zero(t, allocs, path)
	}
}
