<?php
// A router script for PHP's built-in server that routes and reads methods the way Laravel
// and Symfony do, answering in the JSON shape of apps/common.py.
//
//   DIFF_FRAMEWORK=php-laravel DIFF_PHP_MODE=laravel php -S 127.0.0.1:PORT php_router.php
//
// DIFF_PHP_MODE:
//   laravel  case-sensitive routes compiled as Symfony compiles them (`{^/api/admin$}sDu`),
//            matched against the rawurldecode()d path with trailing slashes trimmed
//            (Laravel's UriValidator).
//   ci       a hand-written router with case-insensitive, unanchored-`$` patterns
//            (`#^/api/admin(/.*)?$#iu`); besides `_method` it reads ASP.NET MVC's
//            `X-HTTP-Method-Override` query key the way classic ASP.NET does: `%uXXXX`
//            decoded, compared ignoring case as .NET's OrdinalIgnoreCase does (`ı` is `I`).
//
// Both run the method override of Symfony's Request::getMethod() with
// enableHttpMethodParameterOverride() (Laravel turns it on): for a POST, the
// X-HTTP-Method-Override header ($_SERVER['HTTP_X_HTTP_METHOD_OVERRIDE'], which PHP also
// fills from `X_HTTP_Method_Override` and `X.HTTP.Method.Override`), else `_method` from the
// query ($_GET, after PHP's name mangling: `_method%00x` and `_method.` are `_method`).
// `_method` in a form body ($_POST) is honoured only with DIFF_PHP_BODY_OVERRIDE=1: a proxy
// that streams bodies cannot see it (README.md), so the run leaves it off.
//
// The public handler echoes every header as PHP exposes it: the `HTTP_*` keys of $_SERVER
// (where `-`, `_` and `.` in a name all become `_`: `X.Auth.Roles` is HTTP_X_AUTH_ROLES, and
// a later header overwrites an earlier one of the same key) and getallheaders()'s raw names.

const MARKER = 'ADMIN-HANDLER-REACHED';

$mode = getenv('DIFF_PHP_MODE') ?: 'laravel';
$framework = getenv('DIFF_FRAMEWORK') ?: "php-$mode";

$raw = $_SERVER['REQUEST_URI'] ?? '/';
// Symfony's prepareRequestUri(): an absolute-form target loses its scheme and authority.
if (preg_match('#^[a-zA-Z][a-zA-Z0-9+.-]*://[^/]*#', $raw, $m)) {
    $raw = substr($raw, strlen($m[0]));
}
$q = strpos($raw, '?');
$path = $q === false ? $raw : substr($raw, 0, $q);
$query = $q === false ? '' : substr($raw, $q + 1);
$path = rawurldecode($path);

// Symfony upper-cases REQUEST_METHOD.
$method = strtoupper($_SERVER['REQUEST_METHOD'] ?? 'GET');
$original = $method;
if ($method === 'POST') {
    $override = $_SERVER['HTTP_X_HTTP_METHOD_OVERRIDE'] ?? null;
    if ($override === null || $override === '') {
        $override = null;
        if (getenv('DIFF_PHP_BODY_OVERRIDE') === '1' && isset($_POST['_method'])) {
            $override = $_POST['_method'];
        } elseif (isset($_GET['_method'])) {
            $override = $_GET['_method'];
        } elseif ($mode === 'ci') {
            $override = aspnet_query_override($query);
        }
    }
    if (is_string($override) && preg_match('/^[A-Za-z]+$/D', $override)) {
        $method = strtoupper($override);
    }
}

/** ASP.NET MVC's query override: the key `X-HTTP-Method-Override` (or `_method`), read as
 *  HttpUtility.UrlDecode reads it and compared as OrdinalIgnoreCase compares. */
function aspnet_query_override(string $query)
{
    foreach (explode('&', $query) as $pair) {
        $parts = explode('=', $pair, 2);
        $name = preg_replace_callback('/%[uU]([0-9a-fA-F]{4})/', function ($m) {
            return mb_chr_utf8(hexdec($m[1]));
        }, $parts[0]);
        $name = urldecode($name);
        // .NET's invariant upper case of the letters that fold onto ASCII.
        $name = strtoupper(str_replace(["\u{131}", "\u{17F}"], ['I', 'S'], $name));
        if ($name === 'X-HTTP-METHOD-OVERRIDE' || $name === '_METHOD') {
            return urldecode($parts[1] ?? '');
        }
    }
    return null;
}

function mb_chr_utf8(int $cp): string
{
    // mbstring is not part of php-cli; a BMP code point by hand.
    if ($cp < 0x80) return chr($cp);
    if ($cp < 0x800) return chr(0xC0 | ($cp >> 6)) . chr(0x80 | ($cp & 0x3F));
    return chr(0xE0 | ($cp >> 12)) . chr(0x80 | (($cp >> 6) & 0x3F)) . chr(0x80 | ($cp & 0x3F));
}

if ($mode === 'laravel') {
    // Laravel: rtrim($request->getPathInfo(), '/') ?: '/', then Symfony's compiled regex.
    $subject = rtrim($path, '/');
    if ($subject === '') $subject = '/';
    $flags = 'sDu';
} else {
    $subject = $path;
    $flags = 'iu';
}

$routes = [
    ['^/api/public$', null, 'public'],
    ['^/api/admin$', null, 'admin'],
    ['^/api/admin/.+$', null, 'admin'],
    // Admin routes spelled with letters that have Unicode case pairs (σ/ς/Σ, μ/µ/Μ).
    ["^/api/\u{3C3}ettings(/.*)?$", null, 'admin'],
    ["^/api/\u{3BC}svc(/.*)?$", null, 'admin'],
    ['^/api/items/([^/]+)$', 'DELETE', 'item-delete'],
    ['^/api/items/([^/]+)$', null, 'item'],
];
if ($mode === 'ci') {
    $routes[1] = ['^/api/admin/?$', null, 'admin'];
    $routes[5][0] = $routes[6][0] = '^/api/items/([^/]+)/?$';
}

$handler = 'not-found';
$status = 404;
foreach ($routes as [$pattern, $only, $name]) {
    if (preg_match('#' . $pattern . '#' . $flags, $subject) === 1 && ($only === null || $only === $method)) {
        $handler = $name;
        $status = 200;
        break;
    }
}

$headers = [];
foreach ($_SERVER as $k => $v) {
    if (is_string($v) && (strncmp($k, 'HTTP_', 5) === 0 || $k === 'CONTENT_TYPE' || $k === 'CONTENT_LENGTH')) {
        $headers[] = [$k, $v];
    }
}
foreach (getallheaders() as $k => $v) {
    $headers[] = ["raw:$k", $v];
}

$body = [
    'framework' => $framework,
    'handler' => $handler,
    'method' => $method,
    'original_method' => $original,
    'path' => $path,
    'raw_target' => $_SERVER['REQUEST_URI'] ?? '',
    'query' => $query,
    'headers' => $headers,
];
if ($handler === 'admin' || $handler === 'item-delete') {
    $body['marker'] = MARKER;
}
http_response_code($status);
header('Content-Type: application/json');
$out = json_encode($body, JSON_UNESCAPED_SLASHES | JSON_INVALID_UTF8_SUBSTITUTE | JSON_PARTIAL_OUTPUT_ON_ERROR);
header('Content-Length: ' . strlen($out));
echo $out;
