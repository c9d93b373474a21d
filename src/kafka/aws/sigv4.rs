//! AWS Signature Version 4, as far as the relay needs it: the canonical request, the string to
//! sign, the derived key, and a presigned URL (the signature in the query string, which is what
//! an MSK IAM token carries). Checked against the examples of AWS's SigV4 documentation, and
//! end to end by the tests' broker proxy, which verifies tokens with its own implementation.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::credentials::Credentials;

/// `AWS4-HMAC-SHA256`.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// SHA-256 of the empty payload, hex: what a presigned GET signs as its payload.
pub const EMPTY_PAYLOAD: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// When a request is signed: `YYYYMMDD'T'HHMMSS'Z'` and its date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// `X-Amz-Date`, e.g. `20150830T123600Z`.
    pub time: String,
    /// The credential scope's date, e.g. `20150830`.
    pub date: String,
}

impl Stamp {
    /// The stamp of `at` (seconds since the Unix epoch, UTC).
    pub fn at(unix_seconds: u64) -> Self {
        let days = unix_seconds / 86_400;
        let seconds = unix_seconds % 86_400;
        let (year, month, day) = civil_from_days(days as i64);
        let date = format!("{year:04}{month:02}{day:02}");
        let time = format!(
            "{date}T{:02}{:02}{:02}Z",
            seconds / 3600,
            seconds / 60 % 60,
            seconds % 60
        );
        Self { time, date }
    }
}

/// Year, month, day of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// SigV4's URI encoding: every byte but `A-Z a-z 0-9 - _ . ~` as `%XX`, upper-case hex.
pub fn uri_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The canonical query string: parameters encoded, then sorted by name and value.
pub fn canonical_query(params: &[(String, String)]) -> String {
    let mut encoded: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (uri_encode(k), uri_encode(v)))
        .collect();
    encoded.sort();
    encoded
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// A request to sign: `headers` are the signed ones, names lower-case, values trimmed.
pub struct Canonical<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a [(String, String)],
    pub headers: &'a [(&'a str, &'a str)],
    pub payload_hash: &'a str,
}

impl Canonical<'_> {
    /// `a;b;c`: the signed headers' names, sorted.
    pub fn signed_headers(&self) -> String {
        let mut names: Vec<&str> = self.headers.iter().map(|(name, _)| *name).collect();
        names.sort_unstable();
        names.join(";")
    }

    /// The canonical request, as the documentation lays it out line by line.
    pub fn text(&self) -> String {
        let mut headers: Vec<_> = self.headers.to_vec();
        headers.sort_unstable();
        let header_lines: String = headers
            .iter()
            .map(|(name, value)| format!("{name}:{}\n", value.trim()))
            .collect();
        format!(
            "{}\n{}\n{}\n{}\n{}\n{}",
            self.method,
            self.path,
            canonical_query(self.query),
            header_lines,
            self.signed_headers(),
            self.payload_hash
        )
    }
}

/// `date/region/service/aws4_request`.
pub fn scope(stamp: &Stamp, region: &str, service: &str) -> String {
    format!("{}/{region}/{service}/aws4_request", stamp.date)
}

/// The hex signature of `canonical` with `secret`.
pub fn signature(
    secret: &str,
    stamp: &Stamp,
    region: &str,
    service: &str,
    canonical: &Canonical<'_>,
) -> String {
    let string_to_sign = format!(
        "{ALGORITHM}\n{}\n{}\n{}",
        stamp.time,
        scope(stamp, region, service),
        hex::encode(Sha256::digest(canonical.text()))
    );
    let mut key = format!("AWS4{secret}").into_bytes();
    for part in [stamp.date.as_str(), region, service, "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    hex::encode(hmac(&key, string_to_sign.as_bytes()))
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// Where a request goes, for SigV4: the service's name and region.
#[derive(Debug, Clone, Copy)]
pub struct Service<'a> {
    pub name: &'a str,
    pub region: &'a str,
}

/// A presigned GET of `https://host/path?params`: the query parameters SigV4 adds, the
/// signature last. The session token, if any, is signed with the rest.
pub fn presign(
    credentials: &Credentials,
    (host, path): (&str, &str),
    params: &[(&str, &str)],
    service: Service<'_>,
    stamp: &Stamp,
    expires_seconds: u32,
) -> String {
    let Service {
        name: service,
        region,
    } = service;
    let mut query: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let credential = format!(
        "{}/{}",
        credentials.access_key_id,
        scope(stamp, region, service)
    );
    query.push(("X-Amz-Algorithm".into(), ALGORITHM.into()));
    query.push(("X-Amz-Credential".into(), credential));
    query.push(("X-Amz-Date".into(), stamp.time.clone()));
    query.push(("X-Amz-Expires".into(), expires_seconds.to_string()));
    if let Some(token) = &credentials.session_token {
        query.push(("X-Amz-Security-Token".into(), token.clone()));
    }
    query.push(("X-Amz-SignedHeaders".into(), "host".into()));
    let canonical = Canonical {
        method: "GET",
        path,
        query: &query,
        headers: &[("host", host)],
        payload_hash: EMPTY_PAYLOAD,
    };
    let signature = signature(
        &credentials.secret_access_key,
        stamp,
        region,
        service,
        &canonical,
    );
    format!(
        "https://{host}{path}?{}&X-Amz-Signature={signature}",
        canonical_query(&query)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's example key pair of the SigV4 documentation.
    const EXAMPLE_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    #[test]
    fn stamps_are_utc_calendar_dates() {
        assert_eq!(
            Stamp::at(1_440_938_160),
            Stamp {
                time: "20150830T123600Z".into(),
                date: "20150830".into()
            }
        );
        assert_eq!(Stamp::at(0).time, "19700101T000000Z");
        // A leap day, and the last second of a year.
        assert_eq!(Stamp::at(951_782_400).date, "20000229");
        assert_eq!(Stamp::at(1_735_689_599).time, "20241231T235959Z");
    }

    /// The worked example of "Create a signed AWS API request" (IAM ListUsers, 2015-08-30):
    /// its canonical request hash and its signature.
    #[test]
    fn the_documentation_example_signs_to_the_documented_signature() {
        let query = vec![
            ("Action".to_owned(), "ListUsers".to_owned()),
            ("Version".to_owned(), "2010-05-08".to_owned()),
        ];
        let canonical = Canonical {
            method: "GET",
            path: "/",
            query: &query,
            headers: &[
                (
                    "content-type",
                    "application/x-www-form-urlencoded; charset=utf-8",
                ),
                ("host", "iam.amazonaws.com"),
                ("x-amz-date", "20150830T123600Z"),
            ],
            payload_hash: EMPTY_PAYLOAD,
        };
        assert_eq!(
            hex::encode(Sha256::digest(canonical.text())),
            "f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59"
        );
        let stamp = Stamp::at(1_440_938_160);
        assert_eq!(
            signature(EXAMPLE_SECRET, &stamp, "us-east-1", "iam", &canonical),
            "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
    }

    /// The presigned-URL example of the S3 SigV4 documentation (GET test.txt, 2013-05-24,
    /// expires in 86400 s): S3 signs `UNSIGNED-PAYLOAD`, everything else is the same.
    #[test]
    fn the_documented_presigned_url_signs_to_the_documented_signature() {
        let query: Vec<(String, String)> = [
            ("X-Amz-Algorithm", ALGORITHM),
            (
                "X-Amz-Credential",
                "AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request",
            ),
            ("X-Amz-Date", "20130524T000000Z"),
            ("X-Amz-Expires", "86400"),
            ("X-Amz-SignedHeaders", "host"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let canonical = Canonical {
            method: "GET",
            path: "/test.txt",
            query: &query,
            headers: &[("host", "examplebucket.s3.amazonaws.com")],
            payload_hash: "UNSIGNED-PAYLOAD",
        };
        let stamp = Stamp::at(1_369_353_600);
        assert_eq!(
            signature(
                "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                &stamp,
                "us-east-1",
                "s3",
                &canonical
            ),
            "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
        );
    }

    #[test]
    fn encoding_keeps_only_the_unreserved_characters() {
        assert_eq!(
            uri_encode("kafka-cluster:Connect"),
            "kafka-cluster%3AConnect"
        );
        assert_eq!(uri_encode("a/b c+d=é~_.-"), "a%2Fb%20c%2Bd%3D%C3%A9~_.-");
        assert_eq!(
            canonical_query(&[
                ("b".into(), "2".into()),
                ("a".into(), "x y".into()),
                ("a".into(), "1".into()),
            ]),
            "a=1&a=x%20y&b=2"
        );
    }
}
