// Express 4 or 5 (the `express4`/`express5` npm aliases) with method-override, routing the
// way Express does by default: case-insensitive, non-strict.
// Usage: node express_app.js express4|express5 PORT NAME
'use strict';

const which = process.argv[2];
const port = Number(process.argv[3]);
const name = process.argv[4] || which;
const express = require(which);
const methodOverride = require('method-override');

const MARKER = 'ADMIN-HANDLER-REACHED';
const app = express();

// The query key (`?_method=DELETE`) and the override headers, as method-override's README
// shows them. Each runs only for a POST and only until one has overridden the method.
app.use(methodOverride('_method'));
app.use(methodOverride('X-HTTP-Method-Override'));
app.use(methodOverride('X-HTTP-Method'));
app.use(methodOverride('X-Method-Override'));

function reply(req, res, handler, status) {
  const headers = [];
  for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) {
    headers.push([req.rawHeaders[i], req.rawHeaders[i + 1]]);
  }
  const body = {
    framework: name,
    handler,
    method: req.method,
    original_method: req.originalMethod || req.method,
    path: req.path,
    raw_target: req.originalUrl,
    query: (req.originalUrl.split('?')[1] || ''),
    headers,
  };
  if (handler === 'admin' || handler === 'item-delete') body.marker = MARKER;
  res.status(status || 200).type('application/json').send(JSON.stringify(body));
}

const adminBelow = which === 'express5' ? '/api/admin/*rest' : '/api/admin/*';

app.get('/api/public', (req, res) => reply(req, res, 'public'));
app.all('/api/admin', (req, res) => reply(req, res, 'admin'));
app.all(adminBelow, (req, res) => reply(req, res, 'admin'));
app.get('/api/items/:id', (req, res) => reply(req, res, 'item'));
// A handler that reads the body before answering, as one that parses it would.
app.post('/api/items/:id', (req, res) => {
  req.on('data', () => {});
  req.on('end', () => reply(req, res, 'item'));
  req.on('error', () => res.destroy());
});
app.delete('/api/items/:id', (req, res) => reply(req, res, 'item-delete'));
app.use((req, res) => reply(req, res, 'not-found', 404));
// Express answers a path it cannot decode (`%E0%80`) with 400 through here.
app.use((err, req, res, next) => { // eslint-disable-line no-unused-vars
  reply(req, res, 'not-found', err.status || err.statusCode || 500);
});

const server = app.listen(port, '127.0.0.1');
server.on('error', (e) => { console.error(e.message); process.exit(1); });
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
