//! Rate-limit flags of the services (0 turns a limit off). Averages per
//! second unless named otherwise; bursts of ten seconds' worth.

#[derive(clap::Args, Debug, Clone)]
pub struct KmLimitArgs {
    /// Signed requests one device may make per second.
    #[arg(long, value_name = "N", default_value_t = cloister_km::KmLimits::default().requests_per_sec)]
    pub limit_requests: u32,
    /// Key requests one device may make per second.
    #[arg(long, value_name = "N", default_value_t = cloister_km::KmLimits::default().key_requests_per_sec)]
    pub limit_key_requests: u32,
    /// Enrolment attempts one address may make per minute.
    #[arg(long, value_name = "N", default_value_t = cloister_km::KmLimits::default().enrolments_per_min)]
    pub limit_enrolments: u32,
    /// Requests of any kind one address may make per second.
    #[arg(long, value_name = "N", default_value_t = cloister_km::KmLimits::default().per_address_per_sec)]
    pub limit_per_address: u32,
}

impl KmLimitArgs {
    pub fn limits(&self) -> cloister_km::KmLimits {
        cloister_km::KmLimits {
            requests_per_sec: self.limit_requests,
            key_requests_per_sec: self.limit_key_requests,
            enrolments_per_min: self.limit_enrolments,
            per_address_per_sec: self.limit_per_address,
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct ServerLimitArgs {
    /// Messages one device may post per second.
    #[arg(long, value_name = "N", default_value_t = cloister_server::ServerLimits::default().posts_per_sec)]
    pub limit_posts: u32,
    /// Attachments one device may upload per second.
    #[arg(long, value_name = "N", default_value_t = cloister_server::ServerLimits::default().uploads_per_sec)]
    pub limit_uploads: u32,
    /// Requests of any kind one address may make per second.
    #[arg(long, value_name = "N", default_value_t = cloister_server::ServerLimits::default().per_address_per_sec)]
    pub limit_per_address: u32,
}

impl ServerLimitArgs {
    pub fn limits(&self) -> cloister_server::ServerLimits {
        cloister_server::ServerLimits {
            posts_per_sec: self.limit_posts,
            uploads_per_sec: self.limit_uploads,
            per_address_per_sec: self.limit_per_address,
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct VaultLimitArgs {
    /// Captures one device may send per second.
    #[arg(long, value_name = "N", default_value_t = cloister_vault::VaultLimits::default().captures_per_sec)]
    pub limit_captures: u32,
    /// Searches one compliance device may run per second.
    #[arg(long, value_name = "N", default_value_t = cloister_vault::VaultLimits::default().searches_per_sec)]
    pub limit_searches: u32,
    /// Requests of any kind one address may make per second.
    #[arg(long, value_name = "N", default_value_t = cloister_vault::VaultLimits::default().per_address_per_sec)]
    pub limit_per_address: u32,
}

impl VaultLimitArgs {
    pub fn limits(&self) -> cloister_vault::VaultLimits {
        cloister_vault::VaultLimits {
            captures_per_sec: self.limit_captures,
            searches_per_sec: self.limit_searches,
            per_address_per_sec: self.limit_per_address,
        }
    }
}
