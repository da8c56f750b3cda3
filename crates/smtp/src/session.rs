pub struct SmtpFrontend;
