// Package integration runs the limiter's Transport against real servers
// (nginx limit_req, go-chi/httprate, and the repository's throttleserver in
// its GitHub and Defender modes) and under real clients (Azure's azcore,
// hashicorp/go-retryablehttp, google/go-github), and holds the recipes for
// those clients: which knobs to set when the Transport sits under them.
//
// It is a nested module so that the core's go.mod stays small. Its tests
// run on the real clock against real servers, so they take a few seconds
// each; the measuring program (cmd/measure) prints the table the README
// shows.
package integration

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/go-chi/httprate"
)

// KeyHeader carries the API key that every server here limits by, so that
// several runs against one server do not share a quota.
const KeyHeader = "X-API-Key"

// Nginx is a running nginx with one rate-limited location, started by
// StartNginx.
type Nginx struct {
	URL  string // "http://127.0.0.1:port"; the limited file is URL + "/api/items"
	cmd  *exec.Cmd
	dir  string
	done chan error
}

// NginxLimit is the limit_req rule of StartNginx: rate Rate per second,
// burst Burst, nodelay, keyed by the X-API-Key header, answered 429.
type NginxLimit struct {
	Rate  int
	Burst int
}

// ErrNoNginx is returned by StartNginx when no nginx binary is installed.
var ErrNoNginx = errors.New("integration: nginx is not installed (Debian: apt-get install nginx-light)")

// nginxConf is the whole configuration: one process (master_process off, so
// it runs as the caller and reads the temp files), everything under the
// temp prefix, and limit_req on a location that serves a file, since nginx
// applies limit_req in its preaccess phase, which "return" skips.
const nginxConf = `daemon off;
master_process off;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 512; }
http {
	access_log off;
	client_body_temp_path %[1]s/tmp/body;
	proxy_temp_path %[1]s/tmp/proxy;
	fastcgi_temp_path %[1]s/tmp/fastcgi;
	uwsgi_temp_path %[1]s/tmp/uwsgi;
	scgi_temp_path %[1]s/tmp/scgi;
	default_type application/json;
	keepalive_requests 100000;
	limit_req_zone $http_x_api_key zone=api:1m rate=%[3]dr/s;
	limit_req_status 429;
	server {
		listen %[2]s;
		root %[1]s/html;
		location /api/ {
			limit_req zone=api burst=%[4]d nodelay;
		}
	}
}
`

// StartNginx starts nginx with lim on a free port of 127.0.0.1, in a fresh
// temporary prefix, and returns once it serves. Stop it with Stop.
func StartNginx(lim NginxLimit) (*Nginx, error) {
	bin, err := findNginx()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "limiter-nginx-")
	if err != nil {
		return nil, err
	}
	n := &Nginx{dir: dir, done: make(chan error, 1)}
	if err := n.start(bin, lim); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return n, nil
}

func findNginx() (string, error) {
	if p, err := exec.LookPath("nginx"); err == nil {
		return p, nil
	}
	if _, err := os.Stat("/usr/sbin/nginx"); err == nil {
		return "/usr/sbin/nginx", nil
	}
	return "", ErrNoNginx
}

func (n *Nginx) start(bin string, lim NginxLimit) error {
	for _, d := range []string{"tmp", "html/api"} {
		if err := os.MkdirAll(filepath.Join(n.dir, d), 0o755); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(n.dir, "html/api/items"), []byte(`{"items":[1,2,3]}`+"\n"), 0o644); err != nil {
		return err
	}
	addr, err := freePort()
	if err != nil {
		return err
	}
	conf := filepath.Join(n.dir, "nginx.conf")
	if err := os.WriteFile(conf, fmt.Appendf(nil, nginxConf, n.dir, addr, lim.Rate, lim.Burst), 0o644); err != nil {
		return err
	}

	n.cmd = exec.Command(bin, "-p", n.dir, "-c", conf, "-e", filepath.Join(n.dir, "error.log"))
	var stderr strings.Builder
	n.cmd.Stdout, n.cmd.Stderr = &stderr, &stderr
	if err := n.cmd.Start(); err != nil {
		return fmt.Errorf("integration: starting nginx: %w", err)
	}
	go func() { n.done <- n.cmd.Wait() }()
	n.URL = "http://" + addr
	return n.checkUp(&stderr)
}

// freePort returns a loopback address that was free a moment ago.
func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// checkUp waits, for up to ten seconds, until nginx answers one request
// without a key (limit_req does not count an empty key), and reports
// nginx's own words if it does not.
func (n *Nginx) checkUp(stderr *strings.Builder) error {
	c := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(10 * time.Second)
	err := n.served(c)
	for pause := time.Millisecond; err != nil && !errors.Is(err, errExited) && time.Now().Before(deadline); pause = min(2*pause, 100*time.Millisecond) {
		time.Sleep(pause) // nginx is starting: there is nothing to wait on but the port
		err = n.served(c)
	}
	if err == nil {
		return nil
	}
	log, _ := os.ReadFile(filepath.Join(n.dir, "error.log"))
	n.Stop() // waits for nginx, and so for the writes to stderr
	return fmt.Errorf("integration: nginx did not serve: %v\n%s%s", err, stderr.String(), log)
}

var errExited = errors.New("nginx exited")

// served reports whether nginx answers 200, or why not.
func (n *Nginx) served(c *http.Client) error {
	select {
	case err := <-n.done:
		n.done <- err // for Stop
		return fmt.Errorf("%w: %v", errExited, err)
	default:
	}
	resp, err := c.Get(n.URL + "/api/items")
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %s", resp.Status)
	}
	return nil
}

// Stop ends nginx and removes its temporary prefix.
func (n *Nginx) Stop() {
	if n.cmd != nil && n.cmd.Process != nil {
		_ = n.cmd.Process.Kill()
		<-n.done
		n.cmd = nil
	}
	os.RemoveAll(n.dir)
}

// HTTPRate returns an http.Handler limited by go-chi/httprate to limit
// calls per window per X-API-Key (its sliding window counter), that answers
// a small JSON body, and the instant its windows are aligned to: httprate
// (v0.16) starts its fixed windows when the limiter is made, not on the
// clock's seconds.
func HTTPRate(limit int, window time.Duration) (h http.Handler, origin time.Time) {
	byKey := func(r *http.Request) (string, error) { return r.Header.Get(KeyHeader), nil }
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"items":[1,2,3]}` + "\n"))
	})
	origin = time.Now() // httprate reads the clock within microseconds of this
	return httprate.LimitBy(limit, window, byKey)(ok), origin
}

// HTTPRateFastest returns how long the fastest client takes to make calls
// calls, starting at start, through an HTTPRate(limit, window) made at
// origin. httprate keeps a counter per fixed window (windows start at
// origin) and admits a call while round(previous window's count * the part
// of it still in the sliding window + this window's count) + 1 <= limit, so
// it cannot sustain limit per window, and how fast a job goes depends on
// where in httprate's window it starts. The answer is found by sending each
// call at the first half millisecond httprate would admit it.
func HTTPRateFastest(origin, start time.Time, calls, limit int, window time.Duration) time.Duration {
	const step = 500 * time.Microsecond
	offset := origin.Sub(origin.Truncate(window))
	counts := map[time.Time]int{}
	now := start
	for sent := 0; ; {
		cur := now.Add(-offset).Truncate(window).Add(offset)
		prev := cur.Add(-window)
		elapsed := float64(now.Sub(cur)) / float64(window)
		rate := float64(counts[prev])*(1-elapsed) + float64(counts[cur])
		if int(math.Round(rate))+1 > limit {
			now = now.Add(step)
			continue
		}
		counts[cur]++
		if sent++; sent == calls {
			return now.Sub(start)
		}
	}
}
