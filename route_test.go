package limiter

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRouteRejectsAndRegistersNothing(t *testing.T) {
	tr, _, _, _ := newTestTransport(t, t0, 100, time.Minute, replies(answer(200)))
	require.NoError(t, tr.Route("/api/", 10, time.Minute))
	for _, tc := range []struct {
		name, pattern string
		limit         int
		window        time.Duration
		opts          []Option
		want          string
	}{
		{"bad pattern", "GET /x/{", 1, time.Second, nil, `route "GET /x/{"`},
		{"bad method", "G@T /x", 1, time.Second, nil, "G@T"},
		{"duplicate", "/api/", 1, time.Second, nil, `route "/api/"`},
		{"bad limit", "/b/", 0, time.Second, nil, "limit must be positive, got 0"},
		{"bad window", "/b/", 1, -time.Second, nil, "window must be positive, got -1s"},
		{"bad option", "/b/", 1, time.Second, []Option{WithWindow(2, time.Second)}, "no tighter"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tr.Route(tc.pattern, tc.limit, tc.window, tc.opts...)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
			assert.True(t, strings.HasPrefix(err.Error(), "limiter: "), err.Error())
			assert.Len(t, tr.routes.Load().specs, 1, "nothing registered")
		})
	}
	require.NoError(t, tr.Route("/b/", 1, time.Second), "a pattern refused for its rules is still free")
}

// routeOf returns the limiter of route i of a Transport from NewTransport.
func routeOf(t *testing.T, tr *Transport, i int) *Limiter {
	t.Helper()
	rs := tr.single.routeList()
	require.Greater(t, len(rs), i)
	return rs[i].l
}

// The most specific pattern wins, as ServeMux decides; the route's rules
// hold on top of the connection's.
func TestRouteMostSpecificPattern(t *testing.T) {
	tr, f, l, _ := newTestTransport(t, t0, 100, time.Minute, replies(answer(200)))
	require.NoError(t, tr.Route("/api/", 50, time.Minute))
	require.NoError(t, tr.Route("POST /api/advancedqueries/run", 45, time.Minute))
	require.NoError(t, tr.Route("/api/machines/{id}/", 10, time.Minute))
	ctx := context.Background()
	for _, rq := range []struct{ method, path string }{
		{"POST", "/api/advancedqueries/run"},
		{"GET", "/api/advancedqueries/run"},
		{"GET", "/api/machines/m1/software"},
		{"GET", "/api/alerts"},
		{"GET", "/other"},
	} {
		req, err := http.NewRequestWithContext(ctx, rq.method, "https://api.security.microsoft.com"+rq.path, nil)
		require.NoError(t, err)
		_, err = syncRoundTrip(t, tr, req)
		require.NoError(t, err)
	}
	assert.Len(t, f.callsSeen(), 5)
	assert.Equal(t, 2, routeOf(t, tr, 0).Stats().InWindow, "/api/: the GET to run and /api/alerts")
	assert.Equal(t, 1, routeOf(t, tr, 1).Stats().InWindow, "the POST to run")
	assert.Equal(t, 1, routeOf(t, tr, 2).Stats().InWindow, "the machine")
	assert.Equal(t, 5, l.Stats().InWindow, "every call counts for the connection")
}

// A request that waits for its route holds no slot of the connection and
// does not hold back requests of other routes.
func TestRouteNoHeadOfLineBlocking(t *testing.T) {
	tr, f, l, c := newTestTransport(t, t0, 100, time.Minute, replies(answer(200)))
	require.NoError(t, tr.Route("POST /api/advancedqueries/run", 1, time.Minute))
	ctx := context.Background()
	run := func() *http.Request {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://api.example.com/api/advancedqueries/run", http.NoBody)
		require.NoError(t, err)
		return req
	}
	_, err := syncRoundTrip(t, tr, run())
	require.NoError(t, err)
	waiting := roundTrip(tr, run())
	blockUntil(t, c, 1, "the second query waits for its route")
	assert.Equal(t, 0, l.Stats().InFlight, "holding no slot of the connection")
	assert.Equal(t, 99, l.Remaining())
	for range 5 {
		resp, err := syncRoundTrip(t, tr, newGet(t, ctx, "https://api.example.com/api/alerts"))
		require.NoError(t, err)
		assert.Equal(t, 200, resp.StatusCode)
	}
	requirePending(t, waiting)
	c.Advance(time.Minute)
	require.NoError(t, recv(t, waiting).err)
	assert.Len(t, f.callsSeen(), 7)
}

// On a group Transport, each connection key has its own route limiters.
func TestRoutePerKey(t *testing.T) {
	c := NewManualClock(t0)
	g, err := NewGroup(100, time.Minute, WithClock(c))
	require.NoError(t, err)
	f := &fakeRT{clock: c, reply: replies(answer(200))}
	tr := NewGroupTransport(f, g, nil)
	require.NoError(t, tr.Route("/v1/", 1, time.Minute))
	ctx := context.Background()
	for _, host := range []string{"a.example.com", "b.example.com"} {
		_, err := syncRoundTrip(t, tr, newGet(t, ctx, "https://"+host+"/v1/x"))
		require.NoError(t, err, host)
	}
	assert.Len(t, f.callsSeen(), 2, "b's route slot is its own")
	ch := roundTrip(tr, newGet(t, ctx, "https://a.example.com/v1/y"))
	blockUntil(t, c, 1, "a's route is full")
	c.Advance(time.Minute)
	require.NoError(t, recv(t, ch).err)
}

// tenRoutes registers ten routes in the style of a real API on tr.
func tenRoutes(b *testing.B, tr *Transport) {
	for i, p := range []string{
		"POST /api/advancedqueries/run", "/api/machines/{id}/", "/api/alerts/", "/api/incidents/",
		"GET /api/files/{sha}", "/api/users/{id}/", "/api/ips/{ip}/", "/api/domains/{d}/",
		"POST /api/indicators/batch", "GET /v1/things",
	} {
		if err := tr.Route(p, 1_000_000+i, time.Nanosecond); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkTransportTenRoutes compares with BenchmarkTransport: the same
// request through a Transport with ten routes, one of which it matches
// ("match") or none ("none"), each with its own never-waiting limiter.
func BenchmarkTransportTenRoutes(b *testing.B) {
	for _, path := range []string{"match", "none"} {
		b.Run(path, func(b *testing.B) {
			req, rt := benchRequest(b)
			if path == "none" {
				req.URL.Path = "/v2/other"
			}
			l, err := New(1, time.Nanosecond)
			if err != nil {
				b.Fatal(err)
			}
			tr := NewTransport(rt, l)
			tenRoutes(b, tr)
			if got := tr.routes.Load().match(req); (got >= 0) != (path == "match") {
				b.Fatalf("the request matches route %d", got)
			}
			b.ReportAllocs()
			reportCPU(b)
			for b.Loop() {
				if _, err := tr.RoundTrip(req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// A pattern that names a host matches only that host, also once the
// answer for another host with the same path is remembered.
func TestRouteHostPattern(t *testing.T) {
	tr, _, _, _ := newTestTransport(t, t0, 100, time.Minute, replies(answer(200)))
	require.NoError(t, tr.Route("/v2/", 10, time.Minute))
	require.NoError(t, tr.Route("api.example.com/v1/", 10, time.Minute))
	ctx := context.Background()
	rt := tr.routes.Load()
	for i, tc := range []struct {
		url  string
		want int
	}{
		{"https://api.example.com/v1/x", 1},
		{"https://other.example.com/v1/x", -1},
		{"https://api.example.com/v1/x", 1},
		{"https://other.example.com/v2/x", 0},
		{"https://api.example.com/v2/x", 0},
	} {
		assert.Equal(t, tc.want, rt.match(newGet(t, ctx, tc.url)), "request %d: %s", i, tc.url)
	}
}

func TestNamesHost(t *testing.T) {
	for pattern, want := range map[string]bool{
		"/":                        false,
		"/api/{id}/":               false,
		"GET /api/":                false,
		"POST\t /api/x":            false,
		"api.example.com/":         true,
		"GET api.example.com/v1/":  true,
		"{sub}.example.com/x":      true,
		"DELETE  example.com/a/b/": true,
	} {
		assert.Equal(t, want, namesHost(pattern), pattern)
	}
}

// A route whose options name a clock of its own counts on that clock, not
// on the Transport's.
func TestRouteOwnClock(t *testing.T) {
	tr, f, _, c := newTestTransport(t, t0, 100, time.Minute, replies(answer(200)))
	own := NewManualClock(t0)
	require.NoError(t, tr.Route("/v1/", 1, time.Minute, WithClock(own)))
	ctx := context.Background()
	_, err := syncRoundTrip(t, tr, newGet(t, ctx, "https://api.example.com/v1/a"))
	require.NoError(t, err)
	c.Advance(time.Hour)
	waiting := roundTrip(tr, newGet(t, ctx, "https://api.example.com/v1/b"))
	blockUntil(t, own, 1, "the route's clock has not moved: its window is full")
	requirePending(t, waiting)
	own.Advance(time.Minute)
	require.NoError(t, recv(t, waiting).err)
	assert.Len(t, f.callsSeen(), 2)
}

// A call that waits for its route past the reset of the server's budget
// finds, once admitted, that the server's state is unknown: it goes as
// the probe, alone, as a call that reached the gate after the reset would.
func TestRouteWaitPastBudgetReset(t *testing.T) {
	inBase, release := make(chan struct{}), make(chan struct{})
	reply := func(n int, _ *http.Request) (*http.Response, error) {
		if n == 1 {
			close(inBase)
			<-release
		}
		return respond(200, "X-RateLimit-Remaining", "5", "X-RateLimit-Reset", "30"), nil
	}
	tr, _, _, c := newTestTransport(t, t0, 100, time.Minute, reply)
	require.NoError(t, tr.Route("/r", 1, time.Minute))
	ctx := context.Background()
	_, err := syncRoundTrip(t, tr, newGet(t, ctx, "https://api.example.com/r"))
	require.NoError(t, err)
	second := roundTrip(tr, newGet(t, ctx, "https://api.example.com/r"))
	blockUntil(t, c, 1, "the second call waits for its route, through the reset at t0+30s")
	c.Advance(time.Minute)
	recv(t, inBase)
	tr.single.mu.Lock()
	probing := tr.single.learn.probe != nil
	tr.single.mu.Unlock()
	assert.True(t, probing, "the second call is the probe")
	close(release)
	require.NoError(t, recv(t, second).err)
}

// BenchmarkTransportRoutesVersus interleaves batches of requests through a
// plain Transport and through one with ten routes, as BenchmarkVersusRate
// does, and reports the ratio of the medians: "match" sends a request that one route matches,
// "none" one that no route matches.
func BenchmarkTransportRoutesVersus(b *testing.B) {
	roundTrip := func(tr *Transport, req *http.Request) func() bool {
		return func() bool {
			resp, err := tr.RoundTrip(req)
			return err == nil && resp != nil
		}
	}
	for _, path := range []string{"match", "none"} {
		b.Run(path, func(b *testing.B) {
			req, rt := benchRequest(b)
			if path == "none" {
				req.URL.Path = "/v2/other"
			}
			newTr := func() *Transport {
				l, err := New(1, time.Nanosecond)
				if err != nil {
					b.Fatal(err)
				}
				return NewTransport(rt, l)
			}
			plain, routed := newTr(), newTr()
			tenRoutes(b, routed)
			benchVersus(b, 1, roundTrip(routed, req), "plain", roundTrip(plain, req))
		})
	}
}
