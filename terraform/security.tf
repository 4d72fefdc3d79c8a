# Elasticsearch nodes: 9200 only from the listed private client CIDRs and Kibana; 9300 only between
# cluster nodes. No public ingress anywhere.
resource "aws_security_group" "elasticsearch" {
  name        = "facetrec-${var.environment}-elasticsearch"
  description = "Elasticsearch nodes: HTTP from private clients, transport between nodes"
  vpc_id      = aws_vpc.cluster.id
}

resource "aws_vpc_security_group_ingress_rule" "es_http_clients" {
  for_each          = toset(var.client_cidrs)
  security_group_id = aws_security_group.elasticsearch.id
  description       = "Elasticsearch HTTP from private client network ${each.value}"
  cidr_ipv4         = each.value
  from_port         = 9200
  to_port           = 9200
  ip_protocol       = "tcp"
}

resource "aws_vpc_security_group_ingress_rule" "es_http_kibana" {
  security_group_id            = aws_security_group.elasticsearch.id
  description                  = "Elasticsearch HTTP from Kibana"
  referenced_security_group_id = aws_security_group.kibana.id
  from_port                    = 9200
  to_port                      = 9200
  ip_protocol                  = "tcp"
}

resource "aws_vpc_security_group_ingress_rule" "es_transport" {
  security_group_id            = aws_security_group.elasticsearch.id
  description                  = "Elasticsearch transport between cluster nodes"
  referenced_security_group_id = aws_security_group.elasticsearch.id
  from_port                    = 9300
  to_port                      = 9300
  ip_protocol                  = "tcp"
}

resource "aws_vpc_security_group_egress_rule" "es_within_vpc" {
  security_group_id = aws_security_group.elasticsearch.id
  description       = "Nodes talk to each other and to VPC endpoints only"
  cidr_ipv4         = var.vpc_cidr
  ip_protocol       = "-1"
}

resource "aws_security_group" "kibana" {
  name        = "facetrec-${var.environment}-kibana"
  description = "Kibana: UI from the admin (VPN) network only"
  vpc_id      = aws_vpc.cluster.id
}

resource "aws_vpc_security_group_ingress_rule" "kibana_ui" {
  for_each          = toset(var.admin_cidrs)
  security_group_id = aws_security_group.kibana.id
  description       = "Kibana UI from admin network ${each.value}"
  cidr_ipv4         = each.value
  from_port         = 5601
  to_port           = 5601
  ip_protocol       = "tcp"
}

resource "aws_vpc_security_group_egress_rule" "kibana_to_es" {
  security_group_id = aws_security_group.kibana.id
  description       = "Kibana to Elasticsearch inside the VPC"
  cidr_ipv4         = var.vpc_cidr
  ip_protocol       = "-1"
}

resource "aws_iam_role" "node" {
  name = "facetrec-${var.environment}-es-node"
  assume_role_policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [{ Effect = "Allow", Principal = { Service = "ec2.amazonaws.com" }, Action = "sts:AssumeRole" }]
  })
}

resource "aws_iam_role_policy_attachment" "ssm" {
  role       = aws_iam_role.node.name
  policy_arn = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_instance_profile" "node" {
  name = "facetrec-${var.environment}-es-node"
  role = aws_iam_role.node.name
}
