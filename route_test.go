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
	tr.single.mu.Lock()
	defer tr.single.mu.Unlock()
	require.Greater(t, len(tr.single.routes), i)
	return tr.single.routes[i].l
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
